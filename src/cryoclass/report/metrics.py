"""Per-class junk indicators for class selection, computed from class images alone.

Each metric is interpretable on its own and documented with the direction that looks
like a good class (see :data:`METRIC_INFO` and docs/diagnostics.md). No single metric
proves a class is junk; together they let a selection step rank classes.

Usage::

    m = class_metrics(classes, pixel_A=2.1, mask_radius_px=20.0, frc=frc,
                      shell_res_A=shell_res_A, counts=counts)
    worst = np.argsort(-m["outside_power_frac"])

Conventions: ``classes`` is (K, m, m), protein density positive (as produced by the
engine), the box centre is pixel ``m // 2`` on both axes (the FFT convention of
:mod:`cryoclass.numerics.fourier`). Pure NumPy; no files, no MPI.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: name -> (unit, what it measures, which direction looks like a good class)
METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "count": ("particles", "particles whose best class this is", "higher"),
    "frc_res_A": ("Å", "half-set FRC = 0.5 resolution", "lower"),
    "median_ess": ("classes", "median effective sample size of the members", "lower"),
    "mean_posterior": ("", "mean best-class probability of the members", "higher"),
    "outside_power_frac": ("", "fraction of the image power (about the solvent level) "
                               "outside the particle radius", "lower"),
    "center_offset_A": ("Å", "distance of the density's centre of mass from the box "
                             "centre", "lower"),
    "radius_of_gyration_A": ("Å", "spread of the positive density about its centre of "
                                  "mass", "near the particle's size"),
    "contrast": ("", "standard deviation inside the particle radius over that outside",
                 "higher"),
    "frc_area": ("", "mean FRC over shells 1..Nyquist (area under the curve, 0..1)",
                 "higher"),
}


def _radius_grid(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) relative to the box centre and the radius, each (m, m)."""
    c = np.arange(m) - m // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    return y.astype(np.float64), x.astype(np.float64), np.hypot(y, x)


def frc_area(frc: np.ndarray) -> np.ndarray:
    """Mean of each FRC curve over shells 1..n-1, clipped to [0, 1].

    Parameters
    ----------
    frc : (K, n_shells) array

    Returns
    -------
    (K,) array: 1 for classes whose half-sets agree at every shell, ~0 for noise.
    """
    c = np.clip(np.asarray(frc, dtype=np.float64)[:, 1:], 0.0, 1.0)
    if c.shape[1] == 0:
        return np.full(c.shape[0], np.nan)
    return c.mean(axis=1)


def class_metrics(classes: np.ndarray, pixel_A: float, mask_radius_px: float,
                  frc: np.ndarray | None = None, shell_res_A: np.ndarray | None = None,
                  *, counts: np.ndarray | None = None, median_ess: np.ndarray | None = None,
                  mean_posterior: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-class indicators of junk, each (K,).

    Parameters
    ----------
    classes : (K, m, m) array
        Real-space class images, positive density = protein.
    pixel_A : float
        Pixel size of ``classes`` (Å).
    mask_radius_px : float
        Radius (pixels of ``classes``) inside which the particle is expected; the
        particle radius, not the soft mask's outer edge (outside that edge a masked class
        is zero, which would make every class look clean).
    frc : (K, n_shells) array, optional
        Half-set FRC curves; gives ``frc_area`` and, with ``shell_res_A``, ``frc_res_A``.
    shell_res_A : (n_shells,) array, optional
        Resolution of each shell (Å), ``inf`` at shell 0.
    counts, median_ess, mean_posterior : (K,) arrays, optional
        Passed through so one table holds every per-class statistic.

    Returns
    -------
    dict of (K,) float64 arrays, keys as in :data:`METRIC_INFO`:

    ``outside_power_frac``
        ``sum_{r>R} (x - b)^2 / sum_all (x - b)^2`` with ``b`` the median outside ``R``
        (the solvent level). ~0 for a compact centred particle; about the area fraction
        outside ``R`` for pure noise; high for off-centre particles or neighbours.
    ``center_offset_A``
        Distance from the box centre of the centre of mass of ``max(x - b, 0)``.
    ``radius_of_gyration_A``
        RMS distance of ``max(x - b, 0)`` from its centre of mass.
    ``contrast``
        std(x, r <= R) / std(x, r > R); ``inf`` when the outside is flat.
    ``frc_area``, ``frc_res_A``
        Only when ``frc`` (and ``shell_res_A``) is given; NaN otherwise.
    """
    img = np.asarray(classes, dtype=np.float64)
    if img.ndim != 3 or img.shape[1] != img.shape[2]:
        raise ValueError(f"classes must be (K, m, m), got {img.shape}")
    k, m, _ = img.shape
    y, x, r = _radius_grid(m)
    out_mask = r > mask_radius_px
    in_mask = ~out_mask
    if not out_mask.any() or not in_mask.any():
        raise ValueError(f"mask radius {mask_radius_px} px leaves no pixel on one side "
                         f"in a {m} px box")
    flat = img.reshape(k, -1)
    outside = flat[:, out_mask.ravel()]  # (K, n_out)
    inside = flat[:, in_mask.ravel()]  # (K, n_in)
    bg = np.median(outside, axis=1)  # (K,) solvent level
    dev2 = (flat - bg[:, None]) ** 2
    total = dev2.sum(axis=1)
    out_pow = dev2[:, out_mask.ravel()].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        outside_frac = np.where(total > 0, out_pow / total, np.nan)
        w = np.clip(flat - bg[:, None], 0.0, None)  # (K, m*m) positive density
        wsum = w.sum(axis=1)
        cy = (w * y.ravel()).sum(axis=1) / wsum
        cx = (w * x.ravel()).sum(axis=1) / wsum
        r2 = (w * ((y.ravel()[None] - cy[:, None]) ** 2
                   + (x.ravel()[None] - cx[:, None]) ** 2)).sum(axis=1) / wsum
        sd_in = inside.std(axis=1)
        sd_out = outside.std(axis=1)
        contrast = np.where(sd_out > 0, sd_in / np.where(sd_out > 0, sd_out, 1.0), np.inf)
    none = wsum <= 0
    cy[none] = cx[none] = r2[none] = np.nan
    result = {
        "outside_power_frac": outside_frac,
        "center_offset_A": np.hypot(cy, cx) * pixel_A,
        "radius_of_gyration_A": np.sqrt(r2) * pixel_A,
        "contrast": contrast,
        "frc_area": np.full(k, np.nan),
        "frc_res_A": np.full(k, np.nan),
    }
    if frc is not None:
        frc = np.asarray(frc, dtype=np.float64)
        result["frc_area"] = frc_area(frc)
        if shell_res_A is not None:
            from cryoclass.numerics.mstep import frc_resolution

            result["frc_res_A"] = frc_resolution(frc, shell_res_A)
    for name, val in (("count", counts), ("median_ess", median_ess),
                      ("mean_posterior", mean_posterior)):
        if val is not None:
            arr = np.asarray(val, dtype=np.float64).reshape(-1)
            if arr.size != k:
                raise ValueError(f"{name} has {arr.size} entries for {k} classes")
            result[name] = arr
    return result


def particle_radius_px(geom_like) -> float:
    """Particle radius in working-box pixels from a Geometry-like object.

    Uses ``particle_radius_px`` (input pixels) scaled to the working pixel size when
    present, capped at 0.45 of the box so that an outside ring remains; otherwise 0.35 of
    the box.
    """
    m = int(getattr(geom_like, "work_box", 0) or 0)
    r_in = getattr(geom_like, "particle_radius_px", None)
    ps, pw = getattr(geom_like, "pixel_size_A", None), getattr(geom_like, "work_pixel_A", None)
    if r_in is not None and ps and pw and m:
        return float(min(r_in * ps / pw, 0.45 * m))
    return 0.35 * m


def metrics_for_geometry(classes: np.ndarray, geom_like, frc: np.ndarray | None = None,
                         **per_class) -> dict[str, np.ndarray]:
    """Return :func:`class_metrics` with pixel size and radius taken from a run Geometry.

    For the writer of ``run.h5``: store each entry as ``/classes/metrics/<name>`` (the
    report reads them from there and recomputes them when absent).

    Parameters
    ----------
    classes : (K, m, m) array
    geom_like : Geometry
        Uses ``work_pixel_A``, ``shell_res_A`` and the particle radius.
    frc : (K, n_shells) array, optional
    **per_class
        ``counts``, ``median_ess``, ``mean_posterior`` passed through.
    """
    return class_metrics(classes, float(geom_like.work_pixel_A), particle_radius_px(geom_like),
                         frc=frc, shell_res_A=getattr(geom_like, "shell_res_A", None),
                         **per_class)
