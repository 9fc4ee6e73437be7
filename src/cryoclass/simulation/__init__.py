"""Synthetic cryo-EM particle data sets with known truth (``cryoclass simulate``).

Pipeline, one module per stage: :mod:`.params` (what to simulate, CLI flags),
:mod:`.phantoms` (pseudo-atomic 3D densities), :mod:`.views` (orientations),
:mod:`.plan` (every per-particle random scalar, micrographs, junk, duplicates),
:mod:`.render` (exact projections, CTF, coloured noise), :mod:`.engine` (chunked image
generation) and :mod:`.dataset` (files and in-memory results). The public API is
re-exported by :mod:`cryoclass.simulate`.
"""

from cryoclass.simulation.dataset import (
    render_clean_projections,
    simulate_dataset,
    simulate_images,
    simulator_from_truth,
    truth_arrays,
)
from cryoclass.simulation.params import (
    JUNK_TYPES,
    PRESETS,
    SimulationParams,
    add_arguments,
    params_from_args,
    params_from_dict,
)

__all__ = [
    "JUNK_TYPES",
    "PRESETS",
    "SimulationParams",
    "add_arguments",
    "params_from_args",
    "params_from_dict",
    "render_clean_projections",
    "simulate_dataset",
    "simulate_images",
    "simulator_from_truth",
    "truth_arrays",
]
