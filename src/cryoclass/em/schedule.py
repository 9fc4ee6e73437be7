r"""Which particles, which noise and which resolution each iteration uses.

* :func:`schedule`: the iteration kinds, online-EM then final full iterations.
* :func:`sigma2_used`: the annealed noise model of an iteration.
* :func:`online_step`: the online-EM step size.
* :func:`initial_resolution` and :func:`next_resolution`: the resolution schedule.
* :func:`marginalize_poses`: whether the run marginalizes over every pose;
  :func:`marginal_iteration`: which of its iterations do.

The resolution schedule (``docs/algorithm.md``, "Resolution schedule"): the first
iteration aligns at ``initial_res_A`` (auto: particle diameter D / 3). After each M-step
the resolution the classes support is where the class-size-weighted mean half-set FRC
falls below 0.5, :math:`k_{FRC}`; the next iteration aligns up to
:math:`k = k_{FRC} + 2/D` (a margin of two Fourier speckles of the particle), never
coarser than the current level (the schedule only rises) and never finer than the
maximum alignment resolution. All ranks compute it from the same reduced statistics.
"""

from __future__ import annotations

import numpy as np

from cryoclass.config import Config
from cryoclass.em.levels import coarsest_resolution
from cryoclass.geometry import Geometry
from cryoclass.numerics.mstep import frc_resolution

#: Half-set FRC threshold that marks the resolution the classes support.
FRC_SUPPORTED = 0.5
#: Margin added to the supported frequency, in units of 1 / particle diameter.
MARGIN_SPECKLES = 2.0
#: ``classify.marginalize_poses = "auto"`` marginalizes over every pose when the
#: information per particle at 20 Å (numerics.information) is below this.
MARGINAL_BELOW_INFORMATION = 200.0


def schedule(cfg: Config) -> list[tuple[str, int]]:
    """Return the iteration kinds in order: ("online", i) then ("full", j)."""
    c = cfg.classify
    return ([("online", i) for i in range(c.online_em_iters)]
            + [("full", j) for j in range(c.final_full_iters)])


#: The uncertainty factor when not configured: CryoSPARC's 2 with force max (best poses),
#: 1 when the run marginalizes over every pose.
UNCERTAINTY_FORCE_MAX = 2.0
UNCERTAINTY_MARGINAL = 1.0


def uncertainty_factor(cfg: Config) -> float:
    """Return the factor f of :func:`sigma2_used`: configured, else by the pose treatment.

    Inflating the noise keeps force max's best-pose assignments uncertain while the classes
    are poor. A run that marginalizes over every pose (force max off, exhaustive search)
    already weighs each pose by its posterior; there the inflation also spreads every
    particle over all poses and classes, the classes stay alike for many iterations (at
    K = 50 they did not separate in five), so the default is 1 (docs/accuracy.md §5.6).
    """
    c = cfg.classify
    if c.uncertainty_factor is not None:
        return float(c.uncertainty_factor)
    marginal = not c.force_max and cfg.search.mode == "exhaustive"
    return UNCERTAINTY_MARGINAL if marginal else UNCERTAINTY_FORCE_MAX


def sigma2_used(state, it: int, kind: str, cfg: Config, geom: Geometry):
    r"""Noise variance used by the E-step of iteration ``it``.

    ``f^2 sigma2_init`` (f from :func:`uncertainty_factor`) until ``anneal_start_iter``,
    then a geometric interpolation to the current estimate over ``anneal_iters``
    iterations, then the estimate; final full
    iterations always use the estimate. White noise: the band-averaged value, flat.
    """
    c = cfg.classify
    hi = (uncertainty_factor(cfg) ** 2) * state.sigma2_init
    lo = state.sigma2_est
    if kind == "full" or it >= c.anneal_start_iter + c.anneal_iters:
        s2 = lo.copy()
    elif it < c.anneal_start_iter:
        s2 = hi.copy()
    else:
        frac = (it - c.anneal_start_iter + 1) / (c.anneal_iters + 1)
        s2 = hi ** (1.0 - frac) * lo**frac
    if c.white_noise:
        band_shells = np.unique(geom.shell[geom.align])
        s2 = np.full_like(s2, float(np.mean(s2[band_shells])))
    return np.maximum(s2, 1e-12 * max(float(s2.max()), 1e-30))


def marginalize_poses(cfg: Config, information: float) -> bool:
    """Whether the run marginalizes over every pose (force max off, exhaustive search).

    ``classify.marginalize_poses``: "always", "never" (the configured ``force_max`` and
    ``search.mode``), or "auto": always when the estimated information per particle
    (twice the log-likelihood ratio a noise-free class would give at 20 Å) is below
    :data:`MARGINAL_BELOW_INFORMATION`; an estimate that could not be made (no background
    around the particle) keeps the configured search.
    """
    mode = cfg.classify.marginalize_poses
    if mode == "auto":
        return bool(np.isfinite(information) and information < MARGINAL_BELOW_INFORMATION)
    return mode == "always"


def marginal_iteration(cfg: Config, kind: str, run_marginal: bool) -> bool:
    """Whether an iteration of ``kind`` ("online" or "full") marginalizes over every pose.

    A run that marginalizes (:func:`marginalize_poses`) does so in its online-EM
    iterations, where the classes are poor and a particle's poses are uncertain. Its final
    full passes, over every particle with classes that have converged, use the configured
    search (force max by default) unless ``classify.marginalize_poses`` is "always": the
    full passes then cost force max's time, which at 50,000 particles is most of the run
    (docs/algorithm.md, "Pose marginalization").
    """
    return run_marginal and (kind == "online" or cfg.classify.marginalize_poses == "always")


def online_step(it: int) -> float:
    """Online-EM step size: the running statistics keep ``1 - step`` of their past."""
    return float((it + 1) ** -0.6)


def initial_resolution(geom: Geometry, cfg: Config) -> float:
    """Alignment resolution (Å) of the first iteration."""
    if not cfg.classify.resolution_schedule:
        return geom.max_align_res_A
    res = cfg.classify.initial_res_A
    if res is None:
        res = geom.particle_diameter_A / 3.0
    return float(max(geom.max_align_res_A, min(res, coarsest_resolution(geom))))


def supported_resolution(frc, weights, shell_res_A) -> float:
    """Resolution (Å) where the weighted mean half-set FRC falls below 0.5.

    Parameters
    ----------
    frc : (K, n_shells) half-set FRC of each class
    weights : (K,) class sizes
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    if w.sum() <= 0:
        return float("inf")
    curve = (w[:, None] * np.asarray(frc)).sum(axis=0) / w.sum()
    return float(frc_resolution(curve[None], shell_res_A, FRC_SUPPORTED)[0])


def next_resolution(current_A: float, frc, weights, geom: Geometry, cfg: Config) -> float:
    """Alignment resolution (Å) of the next iteration, from the classes just formed."""
    if not cfg.classify.resolution_schedule:
        return geom.max_align_res_A
    res = supported_resolution(frc, weights, geom.shell_res_A)
    k = (1.0 / res if np.isfinite(res) else 0.0) + MARGIN_SPECKLES / geom.particle_diameter_A
    return float(max(geom.max_align_res_A, min(current_A, 1.0 / k)))


def backprojection_resolution(res_A: float, geom: Geometry, cfg: Config) -> float | None:
    """Online-EM iterations backproject up to the level plus two margins (None: all).

    The next level can rise at most to where these statistics reach plus one margin, so
    nothing beyond is needed yet; final full iterations replace the statistics up to
    ``max_res_A``. Off with the schedule.
    """
    if not cfg.classify.resolution_schedule:
        return None
    k = 1.0 / res_A + 2.0 * MARGIN_SPECKLES / geom.particle_diameter_A
    return None if 1.0 / k <= geom.max_res_A else float(1.0 / k)
