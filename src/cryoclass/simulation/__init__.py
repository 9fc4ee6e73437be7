"""Synthetic cryo-EM particle data sets with known truth (``cryoclass simulate``).

Pipeline, one module per stage: :mod:`.params` (what to simulate, CLI flags),
:mod:`.phantoms` (pseudo-atomic 3D densities), :mod:`.views` (orientations),
:mod:`.plan` (every per-particle random scalar, micrographs, junk, duplicates),
:mod:`.render` (exact projections, CTF, coloured noise), :mod:`.engine` (chunked image
generation) and :mod:`.dataset` (files and in-memory results). The public API is
re-exported by :mod:`cryoclass.simulate`.
"""

from cryoclass.simulation.dataset import simulate_dataset, simulate_images, truth_arrays
from cryoclass.simulation.params import SimulationParams, add_arguments, params_from_args
from cryoclass.simulation.plan import JUNK_TYPES

__all__ = [
    "JUNK_TYPES",
    "SimulationParams",
    "add_arguments",
    "params_from_args",
    "simulate_dataset",
    "simulate_images",
    "truth_arrays",
]
