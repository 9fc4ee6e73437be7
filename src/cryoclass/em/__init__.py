"""The classification engine, one module per stage (``ls`` reads like the loop).

* :mod:`cryoclass.em.driver`: :func:`classify` and ``finish``: shard -> per iteration
  (level, E-step, one Allreduce, M-step) -> per-particle results.
* :mod:`cryoclass.em.schedule`: which particles, which noise and which resolution each
  iteration uses.
* :mod:`cryoclass.em.levels`: a resolution level: coefficient subset (the Fourier-cropped
  box), rotation and shift grids.

Usage (the CLI does this)::

    comm = Comm(MPI.COMM_WORLD)
    result = classify(table, cfg, comm, xp=numpy)
"""

from cryoclass.em.driver import (
    PHASES,
    IterationOutput,
    Layout,
    ModelState,
    ParticleResults,
    RunResult,
    Shard,
    StopRequested,
    classify,
    finish,
    load_shard,
    run_iteration,
)
from cryoclass.em.levels import Level, make_level
from cryoclass.em.schedule import schedule, sigma2_used

__all__ = ["PHASES", "IterationOutput", "Layout", "Level", "ModelState", "ParticleResults",
           "RunResult", "Shard", "StopRequested", "classify", "finish", "load_shard",
           "make_level", "run_iteration", "schedule", "sigma2_used"]
