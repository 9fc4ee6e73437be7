"""Class selection: choose classes of a finished run and write the chosen particles.

A 2D classification is followed by keeping the good classes and dropping the junk
(CryoSPARC's Select 2D Classes). ``cryoclass select`` reads a run directory (``run.h5``
and the input particle file it names) and writes the subset for RELION and CryoSPARC.

Examples::

    cryoclass select run1 --auto                      # judged from the class metrics
    cryoclass select run1 --keep 1,4-9                # by class number
    cryoclass select run1 --drop 2,3 --out run1/sel   # everything but classes 2 and 3
    cryoclass select run1 --min-particles 200 --max-res-A 15

Outputs (default ``RUN/select``): ``selected.star`` / ``selected.cs`` (particles of the
kept classes, every input column plus the 2D alignment, duplicates flagged in ``run.h5``
left out), ``selected_class_averages.mrcs`` (the kept classes, in class order),
``rejected.star`` / ``rejected.cs`` (the other particles, duplicates again left out) and
``summary.txt`` (the per-class table printed on the console, with the limits used).

How classes are chosen (details and the ``--auto`` rule in docs/reference.md):

* thresholds (``--min-particles``, ``--max-res-A``, ``--max-median-ess``,
  ``--min-mean-posterior``) and ``--auto`` decide each class; every given threshold must
  hold and ``--auto`` must not call the class junk;
* without any threshold or ``--auto``, ``--keep`` keeps exactly the listed classes and
  ``--drop`` keeps all classes but the listed ones;
* with them, ``--keep`` / ``--drop`` are final: they override the thresholds and
  ``--auto`` for the listed classes;
* ``--auto`` also drops, inside the kept classes, particles whose in-plane shift is an
  outlier for their class (``--keep-shift-outliers`` turns that off).

The decision functions are pure NumPy (:func:`parse_class_list`,
:func:`sustained_frc_resolution`, :func:`auto_junk_classes`, :func:`shift_outliers`,
:func:`decide`); :func:`load_run`, :func:`write_selection` and :func:`main_select` do the
file work.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cryoclass.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "AutoRule",
    "ClassDecision",
    "RunData",
    "Selection",
    "Thresholds",
    "add_arguments",
    "auto_junk_classes",
    "decide",
    "format_summary",
    "load_run",
    "main_select",
    "parse_class_list",
    "robust_limit",
    "shift_outliers",
    "size_normalised_frc",
    "sustained_frc_resolution",
    "write_selection",
]


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Thresholds:
    """User thresholds; ``None`` means not given. A class must satisfy every given one.

    Attributes
    ----------
    min_particles : int or None
        Keep classes with at least this many particles.
    max_res_A : float or None
        Keep classes whose FRC-0.5 resolution (Å) is this value or finer.
    max_median_ess : float or None
        Keep classes whose members' median ESS is at most this.
    min_mean_posterior : float or None
        Keep classes whose members' mean best-class probability is at least this.
    """

    min_particles: int | None = None
    max_res_A: float | None = None
    max_median_ess: float | None = None
    min_mean_posterior: float | None = None

    def any(self) -> bool:
        """Tell whether at least one threshold is given."""
        return any(v is not None for v in (self.min_particles, self.max_res_A,
                                           self.max_median_ess, self.min_mean_posterior))


@dataclass(frozen=True)
class AutoRule:
    """Constants of the ``--auto`` rule (docs/reference.md explains each one).

    Attributes
    ----------
    tiny_min_particles : int
        A class with fewer particles than this is too small to judge and is dropped.
    tiny_fraction : float
        ... nor with fewer than this fraction of the mean class size (non-empty classes).
    z : float
        Limits lie at least ``z`` good-side standard deviations beyond the median of a
        population shaped like the better half of the classes (see :func:`robust_limit`).
    z_clip : float
        ... and at most ``z_clip`` standard deviations beyond the median of the classes
        that clipping from the best quarter keeps (so junk classes that are the majority
        are still found).
    judge_resolution : bool
        Also judge the size-normalised FRC-0.5 resolution (off: over 309 classes of 19
        benchmark runs it ranked junk classes *better* than good ones, docs/reference.md).
    min_ratio_res : float
        A class is never called junk for a size-normalised resolution less than this
        factor worse than the reference (the best quarter of the classes).
    min_ratio_outside : float
        Same for the power outside the particle radius (factor above the reference).
    min_ratio_contrast : float
        Same for the contrast (factor below the reference).
    max_size_scale : float
        The size normalisation of the FRC extrapolates a class's signal by at most this
        factor in particle count (protects tiny classes' noisy FRCs).
    shift_false_alarm : float
        Per-particle shift outliers: the fraction of a class's well-centred particles
        (Gaussian centring errors) that the shift limit would reject.
    min_class_for_shifts : int
        Classes with fewer members keep all their particles (too few to estimate).
    min_judged_classes : int
        ``--auto`` needs at least this many classes large enough to judge.
    """

    tiny_min_particles: int = 10
    tiny_fraction: float = 0.05
    z: float = 2.0
    z_clip: float = 3.0
    judge_resolution: bool = False
    min_ratio_res: float = 1.25
    min_ratio_outside: float = 3.0
    min_ratio_contrast: float = 3.0
    max_size_scale: float = 4.0
    shift_false_alarm: float = 1e-3
    min_class_for_shifts: int = 10
    min_judged_classes: int = 4


# ------------------------------------------------------------------------ class numbers
def parse_class_list(text: str, n_classes: int, option: str = "--keep") -> np.ndarray:
    """Parse ``"1,4-9"`` into sorted unique 1-based class numbers.

    Parameters
    ----------
    text : str
        Comma-separated numbers and inclusive ranges ``a-b``; spaces are ignored.
    n_classes : int
        Number of classes of the run (valid numbers are 1..n_classes).
    option : str
        Option name for error messages.

    Returns
    -------
    (n,) int64 array, sorted, unique.

    Raises
    ------
    InputError
        Empty items, non-integers, reversed ranges, numbers outside 1..n_classes.
    """
    out: set[int] = set()
    items = [s.strip() for s in str(text).split(",")]
    if not any(items):
        raise InputError(f"{option}: no class numbers given; write e.g. {option} 1,4-9")
    for item in items:
        if not item:
            raise InputError(f"{option} {text!r}: empty item between commas; write e.g. "
                             f"{option} 1,4-9")
        lo_text, dash, hi_text = item.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise InputError(f"{option} {text!r}: {item!r} is not a class number or a range "
                             f"a-b of class numbers; write e.g. {option} 1,4-9") from None
        if hi < lo:
            raise InputError(f"{option} {text!r}: range {item!r} runs backwards; write "
                             f"{hi}-{lo}")
        if lo < 1 or hi > n_classes:
            raise InputError(f"{option} {text!r}: class numbers go from 1 to {n_classes} in "
                             f"this run; {item!r} is outside")
        out.update(range(lo, hi + 1))
    return np.array(sorted(out), dtype=np.int64)


# -------------------------------------------------------------------------- class metrics
def sustained_frc_resolution(frc: np.ndarray, shell_res_A: np.ndarray,
                             threshold: float = 0.5, n_below: int = 2) -> np.ndarray:
    """Resolution (Å) where each FRC curve falls below ``threshold`` and stays there.

    The crossing is the first shell (from shell 1) that starts ``n_below`` consecutive
    shells below the threshold (or runs below it to the last shell), interpolated
    linearly in frequency from the shell before. A single dip (shell 1 often has only a
    handful of Fourier pixels) does not end the curve, unlike a first-crossing rule.

    Parameters
    ----------
    frc : (K, n_shells) array
        Half-set FRC curves, shell 0 = origin.
    shell_res_A : (n_shells,) array
        Resolution of each shell (Å), ``inf`` at shell 0.
    threshold : float
    n_below : int

    Returns
    -------
    (K,) float64 array: the resolution; the last shell's resolution when the curve never
    falls below; ``inf`` when it is below from shell 1 on (no signal).
    """
    c = np.asarray(frc, dtype=np.float64)
    res = np.asarray(shell_res_A, dtype=np.float64)
    n = c.shape[1]
    out = np.full(c.shape[0], np.inf)
    for k in range(c.shape[0]):
        below = c[k] < threshold
        start = None
        for j in range(1, n):
            if below[j:min(j + n_below, n)].all():
                start = j
                break
        if start is None:
            out[k] = res[-1]
        elif start > 1:
            c0, c1 = c[k, start - 1], c[k, start]
            f = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
            out[k] = 1.0 / ((1.0 / res[start - 1]) * (1.0 - f) + (1.0 / res[start]) * f)
    return out


def size_normalised_frc(frc: np.ndarray, counts: np.ndarray, n_ref: float,
                        max_scale: float = 4.0) -> np.ndarray:
    """FRC each class would have with ``n_ref`` particles of the same quality.

    The half-set SSNR ``FRC / (1 - FRC)`` grows in proportion to the particle count, so
    it is scaled by ``n_ref / count`` (clipped to ``[1/max_scale, max_scale]``) and turned
    back into an FRC. Comparing these curves compares the signal per particle, so that a
    small class of a rare view is not judged by its size.

    Parameters
    ----------
    frc : (K, n_shells) array
    counts : (K,) array
        Particles per class.
    n_ref : float
        Reference class size.
    max_scale : float

    Returns
    -------
    (K, n_shells) float64 array.
    """
    c = np.clip(np.asarray(frc, dtype=np.float64), 0.0, 0.999)
    scale = np.clip(n_ref / np.maximum(np.asarray(counts, dtype=np.float64), 1.0),
                    1.0 / max_scale, max_scale)
    ssnr = c / (1.0 - c) * scale[:, None]
    return ssnr / (1.0 + ssnr)


def robust_limit(badness: np.ndarray, z: float, min_ratio: float,
                 z_clip: float = 3.0) -> tuple[float, float]:
    """Return the reference and limit of a log-scale "badness" (larger = worse).

    The reference is the 25th percentile (what the best quarter of the classes reach).
    The limit is the tighter of two estimates of where the good classes end, never
    closer to the reference than the floor ``q25 + log10(min_ratio)`` (which keeps a
    class from being dropped for a difference too small to matter when the good classes
    are all alike):

    - *the better half*: the spread ``sigma = (median - q25) / 0.674`` is what a normal
      population with that lower half would have, and the limit ``q25 + (0.674 + z)
      sigma`` is its median plus ``z`` sigma. It assumes that most classes are good: when
      junk classes are the majority, the median is a junk class and the limit lies
      beyond every class.
    - *clipping from the best classes*: start from the classes within the floor; of the
      current set take the median ``m`` and ``sigma = 1.4826 MAD``; the limit is
      ``m + z_clip * sigma``, the classes under it are the next set, until the set stops
      changing. It assumes only that the best quarter of the classes are good, and its
      spread comes from the classes inside the limit alone.

    Parameters
    ----------
    badness : (n,) array
        log10 of the metric, oriented so that larger is worse; finite entries are used.
    z, z_clip : float
    min_ratio : float
        Minimal factor between limit and reference (>= 1).

    Returns
    -------
    (reference, limit), both in the units of ``badness``.
    """
    b = np.asarray(badness, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return math.nan, math.inf
    q25, q50 = np.percentile(b, [25.0, 50.0])
    floor = float(q25) + math.log10(min_ratio)
    half = float(q25) + (0.674 + z) * (q50 - q25) / 0.674
    good = b <= floor  # never empty: the floor lies at or above q25
    for _ in range(b.size + 1):  # each pass changes the set; it converges well before
        g = b[good]
        m = float(np.median(g))
        clipped = m + z_clip * 1.4826 * float(np.median(np.abs(g - m)))
        new = b <= max(clipped, floor)
        if np.array_equal(new, good):
            break
        good = new
    return float(q25), max(min(half, clipped), floor)


def _log10(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.asarray(x, dtype=np.float64))


def auto_junk_classes(counts: np.ndarray, norm_res_A: np.ndarray,
                      outside_power_frac: np.ndarray, contrast: np.ndarray,
                      rule: AutoRule = AutoRule()) -> tuple[list[str | None], dict]:
    """Judge each class as junk or not from interpretable metrics (the ``--auto`` rule).

    A class is junk when it is empty, too small to judge, or (among the judged classes)
    any of these lies beyond its :func:`robust_limit` over the judged classes: power
    outside the particle radius (higher), contrast inside/outside the radius (lower) and,
    with ``rule.judge_resolution``, the size-normalised FRC-0.5 resolution (coarser).

    Parameters
    ----------
    counts : (K,) array
    norm_res_A : (K,) array
        Size-normalised FRC-0.5 resolution (Å), ``inf`` = no signal.
    outside_power_frac, contrast : (K,) arrays
        From :mod:`cryoclass.report.metrics`.
    rule : AutoRule

    Returns
    -------
    reasons : list of K str or None
        Why each class is junk, None for a good class.
    limits : dict
        ``min_particles``, and per metric ``(reference, limit)`` in the metric's units.

    Raises
    ------
    InputError
        Fewer than ``rule.min_judged_classes`` classes large enough to judge.
    """
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.size
    nonempty = counts > 0
    mean_size = counts[nonempty].mean() if nonempty.any() else 0.0
    min_n = max(float(rule.tiny_min_particles), rule.tiny_fraction * mean_size)
    judged = counts >= min_n
    if judged.sum() < rule.min_judged_classes:
        raise InputError(
            f"--auto needs at least {rule.min_judged_classes} classes with >= {min_n:.0f} "
            f"particles to compare, this run has {int(judged.sum())}; choose classes with "
            "--keep/--drop or thresholds instead")
    metrics = {
        # name: (badness = log10, oriented larger-is-worse; min ratio)
        "outside_power_frac": (_log10(outside_power_frac), rule.min_ratio_outside),
        "contrast": (-_log10(contrast), rule.min_ratio_contrast),
    }
    if rule.judge_resolution:
        metrics["res_A"] = (_log10(norm_res_A), rule.min_ratio_res)
    limits: dict = {"min_particles": min_n}
    bad: dict[str, np.ndarray] = {}
    for name, (b, ratio) in metrics.items():
        ref, lim = robust_limit(b[judged], rule.z, ratio, rule.z_clip)
        sign = -1.0 if name == "contrast" else 1.0
        limits[name] = (10.0 ** (sign * ref), 10.0 ** (sign * lim))
        bad[name] = ~(b <= lim)  # NaN counts as bad: no signal to measure
    reasons: list[str | None] = []
    for j in range(k):
        if counts[j] == 0:
            reasons.append("empty")
            continue
        if not judged[j]:
            reasons.append(f"auto: {int(counts[j])} particles < {min_n:.0f}, too few to judge")
            continue
        why = []
        if "res_A" in bad and bad["res_A"][j]:
            ref, lim = limits["res_A"]
            why.append(f"size-normalised res {norm_res_A[j]:.1f} Å > {lim:.1f} "
                       f"(best classes {ref:.1f})")
        if bad["outside_power_frac"][j]:
            ref, lim = limits["outside_power_frac"]
            why.append(f"outside power {outside_power_frac[j]:.3g} > {lim:.3g} "
                       f"(best classes {ref:.3g})")
        if bad["contrast"][j]:
            ref, lim = limits["contrast"]
            why.append(f"contrast {contrast[j]:.3g} < {lim:.3g} (best classes {ref:.3g})")
        reasons.append("auto: " + "; ".join(why) if why else None)
    return reasons, limits


def shift_outliers(class_number: np.ndarray, shift_x_A: np.ndarray, shift_y_A: np.ndarray,
                   candidates: np.ndarray, false_alarm: float = 1e-3,
                   min_members: int = 10, floor_A: float = 0.0) -> np.ndarray:
    """Flag particles whose in-plane shift is an outlier within their class.

    Per class, the centring errors of its particles are modelled as 2D Gaussian about
    the class's median shift: ``sigma^2 = median(d^2) / (2 ln 2)`` with ``d`` the distance
    from the median shift (the median of a chi-square with 2 degrees of freedom is
    ``2 ln 2``). A particle with ``d > sigma * sqrt(2 ln(1 / false_alarm))`` (at least
    ``floor_A``) is an outlier: a well-centred particle gets there with probability
    ``false_alarm``; an off-centre pick, a neighbour or an aggregate often does.

    Parameters
    ----------
    class_number : (N,) int array
    shift_x_A, shift_y_A : (N,) arrays
        Particle centre minus box centre (Å).
    candidates : (N,) bool array
        Particles to consider (members used for the statistics and flagged).
    false_alarm : float
    min_members : int
        Classes with fewer candidates are left alone.
    floor_A : float
        Smallest limit (Å), e.g. a couple of pixels of the alignment grid.

    Returns
    -------
    (N,) bool array.
    """
    cls = np.asarray(class_number)
    sx = np.asarray(shift_x_A, dtype=np.float64)
    sy = np.asarray(shift_y_A, dtype=np.float64)
    out = np.zeros(cls.size, dtype=bool)
    factor = math.sqrt(2.0 * math.log(1.0 / false_alarm))
    for j in np.unique(cls[candidates]):
        rows = np.flatnonzero(candidates & (cls == j))
        if rows.size < min_members:
            continue
        d = np.hypot(sx[rows] - np.median(sx[rows]), sy[rows] - np.median(sy[rows]))
        sigma = math.sqrt(float(np.median(d**2)) / (2.0 * math.log(2.0)))
        out[rows] = d > max(factor * sigma, floor_A)
    return out


# -------------------------------------------------------------------------------- data
@dataclass
class RunData:
    """What selection needs from a run directory.

    Attributes
    ----------
    run_dir : Path
    particles : dict of (N,) arrays
        ``/particles`` datasets of run.h5 (``class`` 1-based, ``psi_deg``, ...).
    classes : dict of (K,) arrays
        ``count``, ``res_A`` (sustained FRC-0.5), ``norm_res_A`` (size-normalised),
        ``median_ess``, ``mean_posterior``, ``outside_power_frac``, ``contrast``, ...
    attrs : dict
        Attributes of run.h5 (``input``, ``config_toml``, ``box_px``, ...).
    ctf_correct : bool
        Whether the run corrected the CTF (then CTF fields are required and kept).
    """

    run_dir: Path
    particles: dict[str, np.ndarray]
    classes: dict[str, np.ndarray]
    attrs: dict
    ctf_correct: bool = True

    @property
    def n_classes(self) -> int:
        """Number of classes K."""
        return int(self.classes["count"].size)

    def align(self) -> dict[str, object]:
        """Return the ``align`` dict of the particle writers, rebuilt from ``/particles``."""
        p = self.particles
        return {
            "class_index": p["class"].astype(np.int64) - 1,
            "psi_deg": p["psi_deg"].astype(np.float64),
            "shift_x_A": p["shift_x_A"].astype(np.float64),
            "shift_y_A": p["shift_y_A"].astype(np.float64),
            "class_posterior": p["class_posterior"].astype(np.float64),
            "ess": p["ess"].astype(np.float64),
            "best_class_prob": p.get("best_class_prob", p["class_posterior"]).astype(
                np.float64),
            "score": p["score"].astype(np.float64),
            "half_set": p["half_set"].astype(np.int64),
            "ctf_off": not self.ctf_correct,
        }


_PARTICLE_KEYS = ("class", "psi_deg", "shift_x_A", "shift_y_A", "class_posterior", "ess",
                  "score", "half_set")


def load_run(run_dir: str | os.PathLike, rule: AutoRule = AutoRule()) -> RunData:
    """Read ``run.h5`` of a finished run and derive the per-class selection metrics.

    Raises
    ------
    InputError
        No run.h5 (e.g. an interrupted run), or datasets missing.
    """
    run_dir = Path(run_dir)
    path = run_dir / "run.h5"
    if not path.is_file():
        hint = (" (the run was interrupted: finish it with 'cryoclass resume "
                f"{run_dir}')" if (run_dir / "checkpoint.h5").is_file() else "")
        raise InputError(f"{path}: not found; give the directory of a finished "
                         f"cryoclass classify run{hint}")
    try:
        with h5py.File(path, "r") as f:
            missing = [f"/particles/{k}" for k in _PARTICLE_KEYS if k not in f["particles"]]
            missing += [f"/classes/{k}" for k in ("count", "median_ess", "mean_posterior")
                        if k not in f["classes"]]
            if missing:
                raise InputError(f"{path}: missing {', '.join(missing)}; is this a "
                                 "cryoclass run.h5?")
            particles = {k: f["particles"][k][()] for k in f["particles"]}
            gc = f["classes"]
            classes = {k: gc[k][()] for k in gc if isinstance(gc[k], h5py.Dataset)}
            metrics = ({k: gc["metrics"][k][()] for k in gc["metrics"]}
                       if "metrics" in gc else None)
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    counts = np.bincount(particles["class"].astype(np.int64) - 1,
                         minlength=classes["count"].size)[: classes["count"].size]
    if metrics is None:
        metrics = _metrics_from_images(classes, attrs)
    empty = counts == 0  # run.h5 writes 0 for their undefined statistics (no NaN in files)
    cls = {
        "count": counts.astype(np.int64),
        "median_ess": np.where(empty, np.nan, np.asarray(classes["median_ess"],
                                                         dtype=np.float64)),
        "mean_posterior": np.where(empty, np.nan, np.asarray(classes["mean_posterior"],
                                                             dtype=np.float64)),
        "outside_power_frac": np.asarray(metrics["outside_power_frac"], dtype=np.float64),
        "contrast": np.asarray(metrics["contrast"], dtype=np.float64),
        "center_offset_A": np.asarray(metrics.get("center_offset_A",
                                                  np.full(counts.size, np.nan))),
    }
    if "frc" in classes and "shell_res_A" in classes:
        frc, shells = classes["frc"], classes["shell_res_A"]
        cls["res_A"] = sustained_frc_resolution(frc, shells)
        judged = counts >= max(rule.tiny_min_particles,
                               rule.tiny_fraction * counts[counts > 0].mean()
                               if (counts > 0).any() else 0)
        n_ref = float(np.median(counts[judged])) if judged.any() else 1.0
        cls["norm_res_A"] = sustained_frc_resolution(
            size_normalised_frc(frc, counts, n_ref, rule.max_size_scale), shells)
    else:  # older files: the stored first-crossing resolution, not size-normalised
        cls["res_A"] = np.asarray(classes["frc_res_A"], dtype=np.float64)
        cls["norm_res_A"] = cls["res_A"]
    ctf_correct = True
    if "config_toml" in attrs:
        cfg = tomllib.loads(str(attrs["config_toml"]))
        ctf_correct = bool(cfg.get("ctf", {}).get("correct", True))
    return RunData(run_dir=run_dir, particles=particles, classes=cls, attrs=attrs,
                   ctf_correct=ctf_correct)


def _metrics_from_images(classes: dict, attrs: dict) -> dict:
    """Class metrics for a run.h5 written before /classes/metrics existed."""
    from cryoclass.report.metrics import class_metrics

    img = classes["images"]
    logger.warning("run.h5 has no /classes/metrics: computing them from the class images "
                   "with a particle radius of 0.35 x the box")
    return class_metrics(img, float(attrs.get("work_pixel_size_A", 1.0)),
                         0.35 * img.shape[-1])


# --------------------------------------------------------------------------- decisions
@dataclass
class ClassDecision:
    """The decision on one class (1-based ``number``)."""

    number: int
    count: int
    res_A: float
    median_ess: float
    kept: bool
    reason: str
    written: int = 0
    shift_outliers: int = 0


@dataclass
class Selection:
    """Result of :func:`decide`: per-class decisions and the particle rows to write.

    Attributes
    ----------
    decisions : list of ClassDecision
    selected_rows, rejected_rows : (n,) int64 arrays
        Particle rows (input order) of the subset and of the rest; duplicates in neither.
    n_duplicates : int
    limits : dict
        Limits of ``--auto`` (empty without it).
    """

    decisions: list[ClassDecision]
    selected_rows: np.ndarray
    rejected_rows: np.ndarray
    n_duplicates: int = 0
    limits: dict = field(default_factory=dict)

    @property
    def kept_classes(self) -> np.ndarray:
        """1-based numbers of the kept classes, ascending."""
        return np.array([d.number for d in self.decisions if d.kept], dtype=np.int64)


def _threshold_reasons(classes: dict, th: Thresholds) -> list[list[str]]:
    k = classes["count"].size
    out: list[list[str]] = [[] for _ in range(k)]
    for j in range(k):
        n, res = classes["count"][j], classes["res_A"][j]
        ess, post = classes["median_ess"][j], classes["mean_posterior"][j]
        if th.min_particles is not None and not n >= th.min_particles:
            out[j].append(f"{n} particles < {th.min_particles}")
        if th.max_res_A is not None and not res <= th.max_res_A:
            out[j].append(f"res {res:.1f} Å > {th.max_res_A:g}")
        if th.max_median_ess is not None and not ess <= th.max_median_ess:
            out[j].append(f"median ESS {ess:.2f} > {th.max_median_ess:g}")
        if th.min_mean_posterior is not None and not post >= th.min_mean_posterior:
            out[j].append(f"mean posterior {post:.3f} < {th.min_mean_posterior:g}")
    return out


def decide(run: RunData, keep: np.ndarray | None = None, drop: np.ndarray | None = None,
           thresholds: Thresholds = Thresholds(), auto: bool = False,
           drop_shift_outliers: bool | None = None, rule: AutoRule = AutoRule()) -> Selection:
    """Decide every class and pick the particle rows (see the module docstring).

    Parameters
    ----------
    run : RunData
    keep, drop : arrays of 1-based class numbers, optional
    thresholds : Thresholds
    auto : bool
        Apply the ``--auto`` rule.
    drop_shift_outliers : bool, optional
        Drop per-particle shift outliers in kept classes; default: with ``auto``.
    rule : AutoRule

    Raises
    ------
    InputError
        Nothing to decide by, or a class both kept and dropped.
    """
    keep = np.asarray([] if keep is None else keep, dtype=np.int64)
    drop = np.asarray([] if drop is None else drop, dtype=np.int64)
    both = np.intersect1d(keep, drop)
    if both.size:
        raise InputError(f"class(es) {', '.join(map(str, both))} given to both --keep and "
                         "--drop; give each class to one of them")
    rules = auto or thresholds.any()
    if not rules and keep.size == 0 and drop.size == 0:
        raise InputError("nothing to select by: give --keep, --drop, a threshold "
                         "(--min-particles, --max-res-A, --max-median-ess, "
                         "--min-mean-posterior) or --auto")
    c = run.classes
    k = run.n_classes
    reasons: list[list[str]] = _threshold_reasons(c, thresholds)
    limits: dict = {}
    if auto:
        auto_reasons, limits = auto_junk_classes(c["count"], c["norm_res_A"],
                                                 c["outside_power_frac"], c["contrast"], rule)
        for j, why in enumerate(auto_reasons):
            if why is not None:
                reasons[j].append(why)
    kept = np.zeros(k, dtype=bool)
    why_text = [""] * k
    for j in range(k):
        number = j + 1
        if number in keep:
            kept[j], why_text[j] = True, "--keep"
        elif number in drop:
            kept[j], why_text[j] = False, "--drop"
        elif c["count"][j] == 0:
            kept[j], why_text[j] = False, "empty"
        elif rules:
            kept[j] = not reasons[j]
            why_text[j] = "; ".join(reasons[j]) if reasons[j] else "passes" + (
                " --auto" if auto else "") + (" thresholds" if thresholds.any() else "")
        elif keep.size:
            kept[j], why_text[j] = False, "not in --keep"
        else:
            kept[j], why_text[j] = True, "not in --drop"

    p = run.particles
    cls = p["class"].astype(np.int64)
    dup = p.get("duplicate", np.zeros(cls.size, np.int8)).astype(bool)
    in_kept = kept[cls - 1] & ~dup
    outliers = np.zeros(cls.size, dtype=bool)
    if drop_shift_outliers is None:
        drop_shift_outliers = auto
    if drop_shift_outliers:
        floor_A = 2.0 * float(run.attrs.get("work_pixel_size_A",
                                            run.attrs.get("pixel_size_A", 0.0)))
        outliers = shift_outliers(cls, p["shift_x_A"], p["shift_y_A"], in_kept,
                                  rule.shift_false_alarm, rule.min_class_for_shifts, floor_A)
        limits["shift_false_alarm"] = rule.shift_false_alarm
    selected = np.flatnonzero(in_kept & ~outliers)
    rejected = np.flatnonzero(~in_kept & ~dup | outliers)
    decisions = []
    for j in range(k):
        members = cls == j + 1
        d = ClassDecision(number=j + 1, count=int(c["count"][j]), res_A=float(c["res_A"][j]),
                          median_ess=float(c["median_ess"][j]), kept=bool(kept[j]),
                          reason=why_text[j])
        if kept[j]:
            d.shift_outliers = int((members & outliers).sum())
            d.written = int((members & in_kept & ~outliers).sum())
        decisions.append(d)
    return Selection(decisions=decisions, selected_rows=selected, rejected_rows=rejected,
                     n_duplicates=int(dup.sum()), limits=limits)


# ------------------------------------------------------------------------------ output
def format_summary(sel: Selection) -> str:
    """One line per class (number, count, resolution, median ESS, decision, reason) and a total."""
    lines = [f"{'class':>5} {'particles':>9} {'res (Å)':>8} {'ESS':>5}  decision  reason"]
    for d in sel.decisions:
        res = "-" if not math.isfinite(d.res_A) else f"{d.res_A:.1f}"
        ess = "-" if not math.isfinite(d.median_ess) else f"{d.median_ess:.2f}"
        reason = d.reason
        if d.kept and d.shift_outliers:
            reason += f" ({d.shift_outliers} shift outliers dropped)"
        lines.append(f"{d.number:>5} {d.count:>9} {res:>8} {ess:>5}  "
                     f"{'kept' if d.kept else 'dropped':<8}  {reason}")
    lim = sel.limits
    if "contrast" in lim:
        res = (f"size-normalised res <= {lim['res_A'][1]:.1f} Å (best classes "
               f"{lim['res_A'][0]:.1f}); " if "res_A" in lim else "")
        lines.append(
            f"auto limits: >= {lim['min_particles']:.0f} particles; {res}outside power <= "
            f"{lim['outside_power_frac'][1]:.3g} (best {lim['outside_power_frac'][0]:.3g}); "
            f"contrast >= {lim['contrast'][1]:.3g} (best {lim['contrast'][0]:.3g})"
            + (f"; shift outliers at p = {lim['shift_false_alarm']:g}"
               if "shift_false_alarm" in lim else ""))
    n_kept = sum(d.kept for d in sel.decisions)
    n_out = sum(d.shift_outliers for d in sel.decisions)
    total = len(sel.selected_rows) + len(sel.rejected_rows) + sel.n_duplicates
    lines.append(f"kept {n_kept} of {len(sel.decisions)} classes: {len(sel.selected_rows)} of "
                 f"{total} particles selected, {len(sel.rejected_rows)} rejected"
                 + (f" ({n_out} of them shift outliers in kept classes)" if n_out else "")
                 + f", {sel.n_duplicates} duplicates left out")
    return "\n".join(lines) + "\n"


def write_selection(outdir: str | os.PathLike, run: RunData, sel: Selection,
                    particles_path: str | None = None, project_dir: str | None = None,
                    summary: str = "") -> dict[str, Path]:
    """Write the subset, the rejected particles, the kept class averages and summary.txt.

    Parameters
    ----------
    outdir : path
    run : RunData
    sel : Selection
    particles_path : str, optional
        The particle file of the run (default: run.h5's ``input`` attribute).
    project_dir : str, optional
        Folder for relative stack paths (CryoSPARC project directory).
    summary : str
        Text stored in summary.txt after the provenance lines.

    Returns
    -------
    dict name -> path of the files written.
    """
    from cryoclass.io.mrc import read_stack, write_stack
    from cryoclass.io.particles import load_particles, write_subset_cs, write_subset_star
    from cryoclass.io.star import atomic_output

    src = particles_path or str(run.attrs.get("input", ""))
    if not src:
        raise InputError(f"{run.run_dir}/run.h5 does not name its input particle file; "
                         "give it with --particles")
    if not os.path.exists(src):
        raise InputError(f"{src}: the run's particle file is not found (moved?); give its "
                         "new path with --particles")
    table = load_particles(src, ctf=run.ctf_correct, project_dir=project_dir,
                           check_images=False)
    n = run.particles["class"].size
    # run.h5 rows -> input rows (they differ when constant images were left out)
    input_row = np.asarray(run.particles.get("input_row", np.arange(n)), dtype=np.int64)
    n_input = int(run.attrs.get("n_input_particles", n))
    if len(table) != n_input or (n and input_row.max() >= len(table)):
        raise InputError(f"{src} has {len(table)} particles but {run.run_dir}/run.h5 was "
                         f"made from {n_input}: the file changed since the run; give the "
                         "run's input with --particles")
    if not table.box_px:
        table.box_px = int(run.attrs.get("box_px", 0))
    out_cfg = (tomllib.loads(str(run.attrs["config_toml"])).get("output", {})
               if "config_toml" in run.attrs else {})
    if out_cfg.get("micrograph_nx_px"):  # the run's micrograph shape for location/*
        table.micrograph_shape_px = (int(out_cfg["micrograph_ny_px"]),
                                     int(out_cfg["micrograph_nx_px"]))
    from cryoclass.io.paths import prepare_output_dir

    outdir = prepare_output_dir(outdir, option="--out")
    align = {}  # over every input row; rows left out of the run are never written
    for key, val in run.align().items():
        if isinstance(val, np.ndarray):
            full = np.zeros(len(table), dtype=val.dtype)
            full[input_row] = val
            val = full
        align[key] = val
    paths = {name: outdir / name for name in ("selected.star", "selected.cs",
                                              "selected_class_averages.mrcs",
                                              "rejected.star", "rejected.cs", "summary.txt")}
    selected, rejected = input_row[sel.selected_rows], input_row[sel.rejected_rows]
    write_subset_star(paths["selected.star"], table, selected, align)
    write_subset_cs(paths["selected.cs"], table, selected, align)
    write_subset_star(paths["rejected.star"], table, rejected, align)
    write_subset_cs(paths["rejected.cs"], table, rejected, align)
    averages = run.run_dir / "class_averages.mrcs"
    if averages.is_file():
        stack, pixel_A = read_stack(averages)
        write_stack(paths["selected_class_averages.mrcs"], stack[sel.kept_classes - 1],
                    pixel_A or float(run.attrs.get("pixel_size_A", 1.0)))
    else:
        logger.warning("%s not found: no selected_class_averages.mrcs written", averages)
        del paths["selected_class_averages.mrcs"]
    with atomic_output(paths["summary.txt"]) as fh:
        fh.write(f"# cryoclass select of {run.run_dir.resolve()}\n# particles: "
                 f"{os.path.abspath(src)}\n# kept classes: "
                 f"{','.join(map(str, sel.kept_classes))}\n")
        fh.write(summary)
    logger.info("selection written to %s", outdir)
    return paths


# --------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``cryoclass select`` arguments to ``p``."""
    p.add_argument("run", help="run directory of a finished 'cryoclass classify'")
    g = p.add_argument_group("choose classes (numbers as in the report, 1 = largest)")
    g.add_argument("--keep", metavar="LIST",
                   help="keep these classes, e.g. 1,4-9 (alone: only these; with "
                        "thresholds or --auto: kept whatever they say)")
    g.add_argument("--drop", metavar="LIST",
                   help="drop these classes, e.g. 2,3 (alone: keep all others; with "
                        "thresholds or --auto: dropped whatever they say)")
    g.add_argument("--min-particles", type=int, metavar="N",
                   help="keep classes with at least N particles")
    g.add_argument("--max-res-A", "--max-res", dest="max_res_A", type=float, metavar="A",
                   help="keep classes whose FRC-0.5 resolution is A Å or finer")
    g.add_argument("--max-median-ess", type=float, metavar="E",
                   help="keep classes whose particles' median ESS is at most E (1 = "
                        "every particle sure of its class)")
    g.add_argument("--min-mean-posterior", type=float, metavar="P",
                   help="keep classes whose particles' mean best-class probability is at "
                        "least P (0..1)")
    g.add_argument("--auto", action="store_true",
                   help="drop classes whose power outside the particle or contrast is far "
                        "worse than the best classes' of this run, and tiny classes; also "
                        "drops shift outliers inside kept classes (rule: docs/reference.md)")
    g.add_argument("--keep-shift-outliers", action="store_true",
                   help="with --auto: keep particles whose shift is an outlier for their "
                        "class")
    o = p.add_argument_group("input and output")
    o.add_argument("--out", "-o", metavar="DIR",
                   help="output folder (default RUN/select)")
    o.add_argument("--particles", metavar="FILE",
                   help="the run's input particles (default: the path stored in run.h5)")
    o.add_argument("--project-dir", metavar="DIR",
                   help="CryoSPARC project directory for relative blob/path entries")


def main_select(args: argparse.Namespace) -> int:
    """Run ``cryoclass select`` (one process); print the per-class summary; return 0."""
    import sys

    run = load_run(args.run)
    k = run.n_classes
    keep = parse_class_list(args.keep, k, "--keep") if args.keep else None
    drop = parse_class_list(args.drop, k, "--drop") if args.drop else None
    th = Thresholds(min_particles=args.min_particles, max_res_A=args.max_res_A,
                    max_median_ess=args.max_median_ess,
                    min_mean_posterior=args.min_mean_posterior)
    for name, val in (("--min-particles", th.min_particles), ("--max-res-A", th.max_res_A),
                      ("--max-median-ess", th.max_median_ess)):
        if val is not None and not val > 0:
            raise InputError(f"{name} {val}: must be positive")
    if th.min_mean_posterior is not None and not 0 <= th.min_mean_posterior <= 1:
        raise InputError(f"--min-mean-posterior {th.min_mean_posterior}: must be in [0, 1]")
    if getattr(args, "keep_shift_outliers", False) and not args.auto:
        raise InputError("--keep-shift-outliers only applies with --auto")
    sel = decide(run, keep, drop, th, auto=args.auto,
                 drop_shift_outliers=args.auto and not args.keep_shift_outliers)
    text = format_summary(sel)
    out = Path(args.out) if args.out else Path(args.run) / "select"
    write_selection(out, run, sel, particles_path=args.particles,
                    project_dir=args.project_dir, summary=text)
    sys.stdout.write(text)
    sys.stdout.write(f"written: {out}/selected.star, selected.cs, "
                     "selected_class_averages.mrcs, rejected.star, rejected.cs\n")
    return 0
