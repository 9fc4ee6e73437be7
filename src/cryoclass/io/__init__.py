"""Particle I/O: RELION STAR, CryoSPARC .cs and MRC image stacks.

``load_particles`` (in :mod:`cryoclass.io.particles`) reads a particle set into a
:class:`~cryoclass.io.particles.ParticleTable` with unit-suffixed canonical columns;
``ImageSource`` (in :mod:`cryoclass.io.mrc`) reads the particle images lazily; the
``write_particles_*`` functions write the classification results back in the input's
own format. Field names of both formats live in :mod:`cryoclass.io.fields`.
"""
