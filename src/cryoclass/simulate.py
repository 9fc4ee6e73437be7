"""Synthetic particle data sets with known truth: the public entry points.

Example
-------
Command line (the CLI adds these flags with :func:`add_arguments`)::

    cryoclass simulate out/ --n 20000 --box 64 --species 3 --snr 0.05 --junk 0.2

From Python::

    >>> from cryoclass.simulate import SimulationParams, simulate_images
    >>> images, clean, truth = simulate_images(SimulationParams(n_particles=8), seed=1)
    >>> images.shape, truth["species"].shape
    ((8, 64, 64), (8,))

The model, every equation and the truth file layout are in ``docs/simulator.md``;
the implementation lives in :mod:`cryoclass.simulation`.
"""

from cryoclass.simulation import (
    JUNK_TYPES,
    PRESETS,
    SimulationParams,
    add_arguments,
    params_from_args,
    render_clean_projections,
    simulate_dataset,
    simulate_images,
    truth_arrays,
)

__all__ = [
    "JUNK_TYPES",
    "PRESETS",
    "SimulationParams",
    "add_arguments",
    "params_from_args",
    "render_clean_projections",
    "simulate_dataset",
    "simulate_images",
    "truth_arrays",
]
