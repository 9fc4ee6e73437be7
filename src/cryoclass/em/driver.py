"""The classification driver: shard -> E-step -> one Allreduce -> M-step, per iteration.

Usage (the CLI does this)::

    comm = Comm(MPI.COMM_WORLD)
    result = classify(table, cfg, comm, xp=numpy)

Each rank owns a contiguous shard of the particle table (``block_range``), reads and
preprocesses only its own images, and keeps their Fourier coefficients in memory
(host or device). Every iteration every rank runs the same batch choice (from the
seed), the E-step on its members, rotates its per-rotation sums into the class frame,
and the ranks sum ONE packed float64 buffer. Every rank then runs the identical M-step,
so all hold the same class averages. Rank 0 keeps the history and writes outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from cryoclass.backend import array_namespace, to_host
from cryoclass.config import Config
from cryoclass.em.levels import Level, make_level
from cryoclass.em.schedule import (
    backprojection_resolution,
    initial_resolution,
    marginal_iteration,
    marginalize_poses,
    next_resolution,
    online_step,
    schedule,
    sigma2_used,
)
from cryoclass.geometry import Geometry, make_geometry
from cryoclass.numerics import estep, mstep, postprocess
from cryoclass.numerics.ctf import ctf_values
from cryoclass.numerics.fourier import crop_fourier, to_fourier, to_real
from cryoclass.numerics.information import INFO_RES_A, information_estimate, information_sums
from cryoclass.numerics.masks import normalize_background, soft_circular_mask
from cryoclass.numerics.search import PoseSearch
from cryoclass.parallel.comm import Comm
from cryoclass.parallel.partition import (
    batch_members,
    block_range,
    chunks,
    half_sets,
    local_members,
)
from cryoclass.parallel.stats import grouped_median
from cryoclass.progress import Bar
from cryoclass.resources import log_memory
from cryoclass.store import make_store

logger = logging.getLogger(__name__)

CTF_FIELDS = ("defocus_u_A", "defocus_v_A", "defocus_angle_rad", "voltage_kv", "cs_mm",
              "amplitude_contrast", "phase_shift_rad", "bfactor_A2")
HIST_BINS = 200
#: Particles whose images give the information estimate (numerics.information).
INFO_SAMPLE = 1000
CLASS_ESS_BINS = 64


# ----------------------------------------------------------------------------- data
@dataclass
class Shard:
    """Particles of one rank, preprocessed: coefficients and CTF parameters."""

    start: int
    stop: int
    store: object  # (n_local, M) complex64 particles: cryoclass.store (device/host/scratch)
    ctf_params: np.ndarray  # (n_local, 8) float64, CTF_FIELDS order
    half: object  # (n_local,) int64 on device
    n_total: int
    info_sums: np.ndarray = field(default_factory=lambda: np.zeros(2))  # information_sums

    @property
    def n_local(self) -> int:
        """Number of particles on this rank."""
        return self.stop - self.start


@dataclass
class ModelState:
    """Everything needed to continue a run (checkpointed after each iteration)."""

    iteration: int
    classes: np.ndarray  # (K, m, m) float64 real-space class averages
    sigma2_init: np.ndarray  # (n_shells,)
    sigma2_est: np.ndarray  # (n_shells,)
    num: np.ndarray | None = None  # running (2, K, M) complex128
    den: np.ndarray | None = None  # running (2, K, M) float64
    frc: np.ndarray | None = None  # (K, n_shells) last half-set FRC
    history: list = field(default_factory=list)
    align_res_A: float = float("nan")  # alignment resolution of the next iteration
    pose_marginal: int = -1  # 1: marginal over every pose (marginalize_poses); -1: undecided


@dataclass
class ParticleResults:
    """Per-particle results of the final iteration, in input order (rank 0)."""

    class_index: np.ndarray
    class_posterior: np.ndarray
    ess: np.ndarray
    psi_rad: np.ndarray
    shift_px: np.ndarray  # (N, 2) (x, y) in input pixels: particle centre - box centre
    score: np.ndarray
    half_set: np.ndarray
    # the best pose's fit (PoseSearch.fit_statistics): CryoSPARC's alignments2D slots
    image_pow: np.ndarray | None = None
    slice_pow: np.ndarray | None = None
    cross_cor: np.ndarray | None = None
    resid_pow: np.ndarray | None = None
    alpha: np.ndarray | None = None


# ------------------------------------------------------------------ preprocessing
def dtypes(cfg: Config) -> tuple:
    """(real, complex) compute dtypes of ``compute.precision``; long sums are float64."""
    if cfg.compute.precision == "double":
        return np.float64, np.complex128
    return np.float32, np.complex64


def preprocess(images, geom: Geometry, real_dtype=np.float32):
    """Normalize, window, transform and crop raw images to averaging coefficients.

    Parameters
    ----------
    images : real (P, n, n)

    Returns
    -------
    complex (P, M) of the matching precision
    """
    n = images.shape[-1]
    cdt = np.complex64 if real_dtype == np.float32 else np.complex128
    img = normalize_background(images.astype(real_dtype), geom.particle_radius_px)
    xp = array_namespace(img)
    window = soft_circular_mask(n, 0.85 * (n / 2), 0.99 * (n / 2), xp, real_dtype)
    f = to_fourier(img * window[None])
    f = crop_fourier(f, n, geom.work_box)
    return f.reshape(f.shape[0], -1)[:, geom.index].astype(cdt)


def load_shard(table, geom: Geometry, comm: Comm, seed: int, xp: ModuleType,
               read_block: int = 512, show_progress: bool = False,
               real_dtype=np.float32, scratch_dir: str = "", cache: str = "auto") -> Shard:
    """Read and preprocess this rank's contiguous block of particles.

    The preprocessed coefficients go to a :mod:`cryoclass.store` chosen by
    :func:`cryoclass.store.placement`: the compute device when they fit, else (GPU)
    pinned host memory streamed per chunk, or with ``scratch_dir`` a file on a node-local
    disk read back per chunk (``scratch_dir/cryoclass-rank<r>-<pid>.bin``, removed at
    exit), so a shard larger than the memory still runs.
    """
    n = table_size(table)
    start, stop = block_range(n, comm.size, comm.rank)
    offset = getattr(table, "row_offset", 0)  # a rank's slice starts at its own first row
    cdt = np.complex64 if real_dtype == np.float32 else np.complex128
    store = make_store(xp, (stop - start, geom.n_coeffs), cdt, cache, scratch_dir, comm.rank)
    # rows are read in order, so few stacks need to stay mapped (their pages count as the
    # rank's resident memory while mapped)
    source = table.image_source(max_open=8)
    # the information estimate reads one global sample, the same for any number of ranks
    sample = batch_members(n, min(INFO_SAMPLE, n), seed, 2_000_000)
    info = np.zeros(2)
    with Bar(stop - start, "read + preprocess (rank 0)", show_progress) as bar:
        for sl in chunks(stop - start, read_block):
            rows = np.arange(start + sl.start, start + sl.stop) - offset
            imgs = xp.asarray(source.read(rows))
            picked = np.flatnonzero(np.isin(rows + offset, sample))
            if picked.size:
                info += information_sums(imgs[xp.asarray(picked)], geom.pixel_size_A,
                                         geom.particle_diameter_A)
            store.put(sl, preprocess(imgs, geom, real_dtype))
            bar.update(rows.size)
    source.close()  # unmap the stacks: the particles are in the store now
    meta = table.meta.iloc[start - offset:stop - offset]
    params = np.stack([meta[f].to_numpy(dtype=np.float64) for f in CTF_FIELDS], axis=1)
    half = xp.asarray(half_sets(start, stop, n, seed))
    return Shard(start, stop, store, params, half, n, info)


def table_size(table) -> int:
    """Return the size of the whole set (a rank's slice knows it as ``n_total``)."""
    return int(getattr(table, "n_total", len(table)))


def chunk_ctf(shard: Shard, rows: np.ndarray, geom: Geometry, cfg: Config, xp: ModuleType):
    """CTF of particles ``rows`` (local) at the averaging coefficients: (P, M)."""
    rdt = dtypes(cfg)[0]
    if not cfg.ctf.correct:
        return xp.ones((rows.size, geom.n_coeffs), dtype=rdt)
    p = shard.ctf_params[rows]
    return ctf_values(geom.freq_y_invA, geom.freq_x_invA, *p.T,
                      phase_flip=cfg.ctf.phase_flip_only, xp=xp, dtype=rdt)


# ------------------------------------------------------------------ initialization
def initial_noise(shard: Shard, geom: Geometry, comm: Comm, seed: int, xp) -> np.ndarray:
    """Mean power per shell of 100 random particles (the models are empty)."""
    members = batch_members(shard.n_total, min(100, shard.n_total), seed, 1_000_000)
    loc = local_members(members, shard.start, shard.stop)
    buf = np.zeros(2 * geom.n_shells)
    if loc.size:
        y = shard.store.take(loc)
        pw = (xp.abs(y) ** 2).astype(np.float64).sum(axis=0)
        shell = xp.asarray(geom.shell)
        buf[: geom.n_shells] = to_host(xp.bincount(shell, weights=pw,
                                                   minlength=geom.n_shells))
        buf[geom.n_shells:] = np.bincount(geom.shell, minlength=geom.n_shells) * loc.size
    comm.allreduce_sum(buf)
    s2 = buf[: geom.n_shells] / np.maximum(buf[geom.n_shells:], 1)
    s2[0] = s2[1] if geom.n_shells > 1 else s2[0]
    return np.maximum(s2, 1e-12 * s2.max())


def initial_classes(n_classes: int, geom: Geometry, sigma2_init: np.ndarray,
                    seed: int) -> np.ndarray:
    """Random classes with no signal: masked, low-passed Gaussian noise (K, m, m)."""
    m = geom.work_box
    rng = np.random.default_rng([seed, 0x1417])
    noise = rng.standard_normal((n_classes, m, m))
    f = to_fourier(noise)
    from cryoclass.numerics.fourier import radius_grid

    r = radius_grid(m)
    lowpass = np.exp(-0.5 * (r / max(2.0, m * geom.work_pixel_A / 30.0)) ** 2)
    img = to_real(f * lowpass[None], m)
    img = postprocess.apply_mask(img, min(geom.mask_inner_px, 0.45 * m),
                                 min(geom.mask_outer_px, 0.5 * m))
    # scale: a tenth of the mean image power at low resolution
    target = 0.1 * float(np.mean(sigma2_init[1: max(3, geom.n_shells // 4)]))
    fc = to_fourier(img).reshape(n_classes, -1)[:, geom.index]
    low = (geom.shell > 0) & (geom.shell < max(3, geom.n_shells // 4))
    cur = float(np.mean(np.abs(fc[:, low]) ** 2))
    return img * np.sqrt(target / max(cur, 1e-30))


# -------------------------------------------------------------------- iteration
@dataclass
class IterationOutput:
    """What one iteration's E-step produced on this rank."""

    packed: object  # (layout.total,) float64 buffer to reduce, on the compute device
    local_rows: np.ndarray  # rows (local) processed
    cls: np.ndarray  # (P,) best class
    pmax: np.ndarray  # (P,)
    ess: np.ndarray  # (P,)
    psi_idx: np.ndarray  # (P,) rotation index in the level's grid
    psi_rad: np.ndarray  # (P,) best rotation
    shift_px: np.ndarray  # (P, 2) (x, y) work-box px
    score: np.ndarray  # (P,)
    fit: dict = field(default_factory=dict)  # (P,) arrays of PoseSearch.fit_statistics
    phase_seconds: dict = field(default_factory=dict)  # this rank's time per E-step phase
    estep_flops: float = 0.0  # this rank's floating-point operations in the pose search


#: Per-particle fit statistics of full iterations (PoseSearch.fit_statistics).
FIT = ("image_pow", "slice_pow", "cross_cor", "resid_pow", "alpha")
#: E-step phases timed on each rank (seconds, in each iteration record).
PHASES = ("t_references", "t_coarse", "t_fine", "t_backproject", "t_class_frame")


def _lap(xp: ModuleType, t0: float) -> float:
    """Seconds since ``t0``, after the device has finished its queued work."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
    return time.perf_counter() - t0


class Layout:
    """Offsets of the packed per-iteration reduction buffer."""

    def __init__(self, k: int, m: int, n_shells: int):
        self.sizes = {"num": 2 * 2 * k * m, "den": 2 * k * m, "noise": n_shells,
                      "noise_n": n_shells, "class_w": k, "mstep_w": k, "n": 1,
                      "ess_hist": HIST_BINS, "pmax_hist": HIST_BINS,
                      "pose_mass_hist": HIST_BINS, "class_ess_hist": k * CLASS_ESS_BINS,
                      "changed_class": 1, "psi_change": 1,
                      "revisited": 1, "loglik": 1, "flops": 1}
        self.off = {}
        o = 0
        for key, s in self.sizes.items():
            self.off[key] = (o, o + s)
            o += s
        self.total = o

    def view(self, buf: np.ndarray, key: str) -> np.ndarray:
        """Slice of the buffer for ``key``."""
        a, b = self.off[key]
        return buf[a:b]


def run_iteration(state: ModelState, shard: Shard, geom: Geometry, level: Level, cfg: Config,
                  kind: str, it: int, s2: np.ndarray, xp: ModuleType, last_class, last_psi,
                  layout: Layout, show_progress: bool = False) -> IterationOutput:
    """E-step on this rank's members of iteration ``it`` at resolution ``level``.

    Returns the packed statistics (class-frame sums at every averaging coefficient).
    """
    c = cfg.classify
    k = c.n_classes
    n_psi = level.psi_rad.size
    m_coef = geom.n_coeffs
    if kind == "online":
        members = batch_members(shard.n_total, c.batch_size_per_class * k, c.seed, it)
        rows_all = local_members(members, shard.start, shard.stop)
    else:
        rows_all = np.arange(shard.n_local)
    # hard classification in the run's last iteration only (docs/algorithm.md)
    hard = kind == "full" and c.hard_classification and it == len(schedule(cfg)) - 1

    tm = {key: 0.0 for key in PHASES}
    flops = 0.0
    t_ph = [time.perf_counter()]

    def lap(name):  # add the time since the last lap to phase ``name``
        tm[name] += _lap(xp, t_ph[0])
        t_ph[0] = time.perf_counter()

    rdt = dtypes(cfg)[0]
    ps = PoseSearch(xp.asarray(state.classes.astype(rdt)), s2, geom, level, c.force_max,
                    cfg.search.padding_factor, rdt)
    m_bp = level.bp.size
    num_bins = xp.zeros((2 * k * n_psi, m_bp), dtype=np.complex128)
    den_bins = xp.zeros((2 * k * n_psi, m_bp), dtype=np.float64)
    noise = xp.zeros(geom.n_shells, dtype=np.float64)
    buf = np.zeros(layout.total)
    lap("t_references")
    outs = {name: [] for name in ("cls", "pmax", "ess", "psi", "shift", "score", "pose_mass")
            + FIT}
    mstep_w = xp.zeros(k, dtype=np.float64)
    loglik_sum = 0.0
    bar = Bar(rows_all.size, f"iteration {it + 1} E-step (rank 0)", show_progress)
    for sl in chunks(rows_all.size, ps.chunk_size(cfg.compute.chunk_size)):
        rows = rows_all[sl]
        drows = xp.asarray(rows)
        y = shard.store.take(rows)
        ctf = chunk_ctf(shard, rows, geom, cfg, xp)
        ar = xp.arange(rows.size)
        t_ph[0] = time.perf_counter()
        poses = ps.search(y, ctf, lap)
        flops += poses.flops
        cp = poses.class_post
        best = cp.argmax(axis=1)
        weights = cp
        if hard:
            weights = xp.zeros_like(cp)
            weights[ar, best] = 1.0  # poses stay marginalized when force max is off
        mstep_w += weights.sum(axis=0)
        ps.backproject(num_bins, den_bins, y, ctf, poses, weights, shard.half[drows])
        lap("t_backproject")
        t_b = poses.shift[ar, best]  # (P, 2) lattice steps
        psi_b = poses.psi[ar, best]
        model = ps.model_at(ctf, best, t_b, psi_b)
        noise += ps.residual_power(y, model)
        ess = estep.effective_sample_size(cp)
        pmax = cp.max(axis=1)
        score = poses.best_val[ar, best]
        loglik_sum += float(to_host(poses.score[ar, best]).sum())
        fit = ps.fit_statistics(y, model) if kind == "full" else {}
        del model
        for name, arr in (("cls", best), ("pmax", pmax), ("ess", ess), ("psi", psi_b),
                          ("shift", t_b * level.shift_step_px), ("score", score),
                          ("pose_mass", poses.pose_mass[ar, best]), *fit.items()):
            outs[name].append(to_host(arr))
        bar.update(rows.size)
    bar.close()
    res = {name: (np.concatenate(v) if v else np.zeros((0, 2) if name == "shift" else 0))
           for name, v in outs.items()}
    # rotate the per-psi sums into the class frame (all ranks, before the reduction)
    t_ph = time.perf_counter()
    num_c, den_c = mstep.bins_to_class_frame(num_bins, den_bins, level.bp_box,
                                             xp.asarray(level.bp_index), geom.ky[level.bp],
                                             geom.kx[level.bp], level.psi_rad,
                                             cfg.search.padding_factor)
    if m_bp < m_coef:  # online EM up to the backprojection radius: zero beyond it
        num_f = xp.zeros((2, k, m_coef), dtype=np.complex128)
        den_f = xp.zeros((2, k, m_coef), dtype=np.float64)
        num_f[..., xp.asarray(level.bp)] = num_c
        den_f[..., xp.asarray(level.bp)] = den_c
        num_c, den_c = num_f, den_f
    tm["t_class_frame"] = _lap(xp, t_ph)
    layout.view(buf, "noise_n")[:] = ps.shell_counts() * rows_all.size
    layout.view(buf, "class_w")[:] = np.bincount(res["cls"].astype(np.int64), minlength=k)
    layout.view(buf, "n")[:] = rows_all.size
    layout.view(buf, "ess_hist")[:] = np.histogram(res["ess"], HIST_BINS,
                                                   (1.0, max(k, 1.0 + 1e-9)))[0]
    layout.view(buf, "pmax_hist")[:] = np.histogram(res["pmax"], HIST_BINS, (0.0, 1.0))[0]
    layout.view(buf, "pose_mass_hist")[:] = np.histogram(res["pose_mass"], HIST_BINS,
                                                         (0.0, 1.0))[0]
    ess_top = max(k, 1.0 + 1e-9)
    cbin = np.clip(((res["ess"] - 1.0) / (ess_top - 1.0) * CLASS_ESS_BINS).astype(np.int64),
                   0, CLASS_ESS_BINS - 1)
    layout.view(buf, "class_ess_hist")[:] = np.bincount(
        res["cls"].astype(np.int64) * CLASS_ESS_BINS + cbin,
        minlength=k * CLASS_ESS_BINS)[: k * CLASS_ESS_BINS]
    prev_c = last_class[rows_all]
    seen = prev_c >= 0
    layout.view(buf, "revisited")[:] = seen.sum()
    layout.view(buf, "changed_class")[:] = (prev_c[seen] != res["cls"][seen]).sum()
    psi_rad = level.psi_rad[res["psi"].astype(np.int64)]
    dpsi = np.abs(((psi_rad - last_psi[rows_all] + np.pi)
                   % (2 * np.pi)) - np.pi)
    layout.view(buf, "psi_change")[:] = np.degrees(dpsi[seen]).sum()
    layout.view(buf, "loglik")[:] = loglik_sum
    layout.view(buf, "flops")[:] = flops
    # the large sums stay on the compute device: one packed buffer there, summed in place by
    # a GPU-aware MPI (staged through the host otherwise)
    buf = xp.asarray(buf)
    layout.view(buf, "num")[:] = num_c.reshape(-1).view(np.float64)
    layout.view(buf, "den")[:] = den_c.reshape(-1)
    layout.view(buf, "noise")[:] = noise
    layout.view(buf, "mstep_w")[:] = mstep_w
    fit = {name: res[name].astype(np.float64) for name in FIT if kind == "full"}
    return IterationOutput(buf, rows_all, res["cls"].astype(np.int64), res["pmax"], res["ess"],
                           res["psi"].astype(np.int64), psi_rad,
                           res["shift"].astype(np.float64),
                           res["score"], fit, tm, flops)


def reseed_empty_classes(state: ModelState, counts: np.ndarray, cfg: Config, geom: Geometry,
                         it: int) -> list[int]:
    """Split the largest classes into classes that captured (almost) no particles.

    A class whose best-class count in an online-EM batch is below 5% of
    ``batch_size_per_class`` (at least 2) takes a copy of the largest live class's
    statistics, scaled by 0.1 so its own next batch dominates, and its image becomes the
    donor's plus a small masked low-pass random perturbation (seeded by the iteration and
    class), so the next E-step splits the donor's particles between the two. Identical on
    every rank. Returns the re-seeded classes.
    """
    c = cfg.classify
    floor = max(2.0, 0.05 * c.batch_size_per_class)
    dead = [int(k) for k in np.flatnonzero(counts < floor)]
    if not dead or state.num is None:
        return []
    donors = [int(k) for k in np.argsort(-counts, kind="stable") if counts[k] >= floor]
    if not donors:
        return []
    m = geom.work_box
    out = []
    for j, k in enumerate(dead):
        d = donors[j % len(donors)]
        rng = np.random.default_rng([c.seed, 0x5EED, it, k])
        noise = to_real(to_fourier(rng.standard_normal((m, m))) * np.exp(
            -0.5 * (np.hypot(*np.meshgrid(np.fft.fftfreq(m) * m, np.fft.rfftfreq(m) * m,
                                          indexing="ij")) / max(2.0, m / 16)) ** 2), m)
        noise *= 0.1 * state.classes[d].std() / max(noise.std(), 1e-30)
        state.classes[k] = state.classes[d] + postprocess.apply_mask(
            noise[None], geom.mask_inner_px, geom.mask_outer_px)[0]
        state.num[:, k] = 0.1 * state.num[:, d]
        state.den[:, k] = 0.1 * state.den[:, d]
        out.append(k)
    return out


def hist_quartiles(hist: np.ndarray, lo: float, hi: float) -> list[float]:
    """25/50/75% points of a histogram over [lo, hi] (linear within bins)."""
    tot = hist.sum()
    if tot <= 0:
        return [float("nan")] * 3
    edges = np.linspace(lo, hi, hist.size + 1)
    cum = np.concatenate([[0.0], np.cumsum(hist)]) / tot
    return [float(np.interp(q, cum, edges)) for q in (0.25, 0.5, 0.75)]


def m_step(state: ModelState, num: np.ndarray, den: np.ndarray, geom: Geometry, cfg: Config,
           xp: ModuleType):
    """Class averages from the statistics, then mask/recentre/verticalize/constraints.

    Returns
    -------
    classes (K, m, m) float64 host, frc (K, n_shells), com (K, 2) px, alpha (K,) rad
    """
    c = cfg.classify
    k = c.n_classes
    m = geom.work_box
    avg, frc_curve, _ = mstep.class_averages(
        xp.asarray(num), xp.asarray(den), xp.asarray(geom.shell), xp.asarray(geom.herm),
        geom.n_shells, frc_regularization=c.frc_regularization, T=c.regularization_T)
    grid = mstep.scatter_half_plane(avg, xp.asarray(geom.index), m)
    img = to_real(grid, m)
    com = xp.zeros((k, 2))
    alpha = xp.zeros(k)
    if cfg.mask.enabled:
        img = postprocess.apply_mask(img, geom.mask_inner_px, geom.mask_outer_px)
    if cfg.recenter.enabled:
        img, com = postprocess.recenter(img, cfg.recenter.threshold, cfg.recenter.binary)
    if cfg.constraints.align_filaments_vertically:
        img, alpha = postprocess.verticalize(img, cfg.recenter.threshold,
                                             cfg.search.padding_factor)
    if cfg.constraints.non_negativity or cfg.constraints.clamp_solvent:
        img = postprocess.non_negative(img)
    if cfg.constraints.clamp_solvent:
        img = postprocess.clamp_solvent(img, geom.mask_inner_px,
                                        min(geom.mask_outer_px, 0.5 * m))
    return (to_host(img).astype(np.float64), to_host(frc_curve), to_host(com),
            to_host(alpha))


@dataclass
class RunResult:
    """Everything the outputs need: class data on every rank, each rank's own particles.

    ``local`` holds this rank's particles (rows ``start`` to ``start + n_local`` of the
    set); ``particles`` is the whole set in a one-rank run (None otherwise: use
    :meth:`gather_particles`, which costs memory for all N on rank 0).
    """

    geom: Geometry
    state: ModelState
    particles: ParticleResults | None
    class_order: np.ndarray  # new class j = old class class_order[j]
    counts: np.ndarray
    frc_res_A: np.ndarray
    median_ess: np.ndarray
    mean_posterior: np.ndarray
    timings: dict
    local: ParticleResults | None = None  # this rank's particles (rows start..)
    start: int = 0
    n_total: int = 0

    def gather_particles(self, comm: Comm) -> ParticleResults | None:
        """Return every particle's results on rank 0 (None elsewhere); collective.

        For tests and small runs: the outputs are written from each rank's own particles.
        """
        parts = comm.gather(self.local)
        if comm.rank != 0:
            return None
        return ParticleResults(*(
            None if getattr(parts[0], f.name) is None
            else np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(ParticleResults)))


class StopRequested(Exception):
    """A batch system asked the job to stop; the state after ``iteration`` is saved."""

    def __init__(self, iteration: int):
        super().__init__(f"stopped after iteration {iteration}")
        self.iteration = iteration


def classify(table, cfg: Config, comm: Comm, xp: ModuleType = np,
             state: ModelState | None = None, on_iteration=None,
             should_stop=None) -> RunResult:
    """Run the whole classification on this rank's shard.

    Parameters
    ----------
    table : ParticleTable
    cfg : Config
    comm : Comm
    xp : numpy or cupy
    state : ModelState, optional
        Resume from a checkpointed state.
    on_iteration : callable(state, geom, record, is_last), optional
        Called on every rank after each iteration (checkpointing, figures).
    should_stop : callable() -> bool, optional
        Polled after each iteration; when true on any rank, every rank raises
        :class:`StopRequested` after ``on_iteration`` has run.
    """
    t0 = time.perf_counter()
    c = cfg.classify
    k = c.n_classes
    n = table_size(table)
    if k > n:
        from cryoclass.errors import InputError

        raise InputError(f"{k} classes requested but the particle set has only {n} "
                         "particles: use --classes <= the number of particles")
    pixel_A = getattr(table, "pixel_size_A", None)
    if pixel_A is None:
        pixel_A = float(table.meta["pixel_size_A"].iloc[0])
    geom = make_geometry(table.box_px, pixel_A, cfg)
    show = comm.rank == 0 and cfg.output.progress
    shard = load_shard(table, geom, comm, c.seed, xp, show_progress=show,
                       real_dtype=dtypes(cfg)[0], scratch_dir=cfg.compute.scratch_dir,
                       cache=cfg.compute.particle_cache)
    t_pre = time.perf_counter() - t0
    log_memory("after preprocessing")
    if state is None:
        s2i = initial_noise(shard, geom, comm, c.seed, xp)
        state = ModelState(0, initial_classes(k, geom, s2i, c.seed), s2i, s2i.copy(),
                           align_res_A=initial_resolution(geom, cfg))
    elif not np.isfinite(state.align_res_A):  # a checkpoint from before the schedule
        state.align_res_A = initial_resolution(geom, cfg)
    info_sums = comm.allreduce_sum(shard.info_sums.copy())
    info = information_estimate(info_sums)
    if state.pose_marginal < 0:  # decided once per run (a resumed run keeps its choice;
        # one checkpointed before the choice existed keeps the configured search)
        state.pose_marginal = int(state.iteration == 0 and marginalize_poses(cfg, info))
    configured = (f"{cfg.search.mode.replace('_', '-')} search, force max "
                  f"{'on' if c.force_max else 'off'}")
    if comm.rank == 0:
        logger.info("information per particle at %.0f Å: %.1f (twice the log-likelihood "
                    "ratio of a noise-free class; %d particles sampled); poses: %s",
                    INFO_RES_A, info, int(info_sums[1]),
                    ("marginalized over all of them (force max off, exhaustive search) in "
                     + ("every iteration" if marginal_iteration(cfg, "full", True) else
                        f"the online-EM iterations, then {configured}")
                     if state.pose_marginal else configured))
    # the search of the iterations that marginalize over every pose
    marginal_cfg = dataclasses.replace(
        cfg, classify=dataclasses.replace(c, force_max=False),
        search=dataclasses.replace(cfg.search, mode="exhaustive"))
    marginal_geom = dataclasses.replace(geom, search_mode="exhaustive")
    layout = Layout(k, geom.n_coeffs, geom.n_shells)
    last_class = np.full(shard.n_local, -1, dtype=np.int64)
    last_psi = np.zeros(shard.n_local)
    plan = schedule(cfg)
    final = None
    com_final = np.zeros((k, 2))
    alpha_final = np.zeros(k)
    for it in range(state.iteration, len(plan)):
        kind, sub = plan[it]
        t_it = time.perf_counter()
        marginal = marginal_iteration(cfg, kind, bool(state.pose_marginal))
        it_cfg, it_geom = (marginal_cfg, marginal_geom) if marginal else (cfg, geom)
        s2 = sigma2_used(state, it, kind, it_cfg, it_geom)
        level = make_level(it_geom, state.align_res_A,
                           backprojection_resolution(state.align_res_A, geom, cfg)
                           if kind == "online" else None)
        out = run_iteration(state, shard, it_geom, level, it_cfg, kind, it, s2, xp,
                            last_class, last_psi, layout, show_progress=show)
        t_e = time.perf_counter() - t_it
        t_red = time.perf_counter()
        buf = comm.allreduce_sum_to_host(out.packed)
        t_red = time.perf_counter() - t_red
        num = layout.view(buf, "num").view(np.complex128).reshape(2, k, -1).copy()
        den = layout.view(buf, "den").reshape(2, k, -1).copy()
        if kind == "online" and state.num is not None and sub > 0:
            step = online_step(sub)
            num = (1 - step) * state.num + step * num
            den = (1 - step) * state.den + step * den
        if level.bp.size < geom.n_coeffs:  # the statistics exist up to the radius only
            outside = np.ones(geom.n_coeffs, dtype=bool)
            outside[level.bp] = False
            num[..., outside] = 0
            den[..., outside] = 0
        state.num, state.den = num, den
        noise_n = layout.view(buf, "noise_n")
        ok = noise_n > 0
        est = state.sigma2_est.copy()
        est[ok] = layout.view(buf, "noise")[ok] / noise_n[ok]
        est[0] = est[1] if est.size > 1 else est[0]
        t_m = time.perf_counter()
        classes, frc_curve, com, alpha = m_step(state, num, den, geom, cfg, xp)
        t_m = time.perf_counter() - t_m
        state.classes, state.frc = classes, frc_curve
        reseeded = []
        if (kind == "online" and c.reseed_empty
                and sub < int(0.75 * c.online_em_iters)):
            reseeded = reseed_empty_classes(state, layout.view(buf, "class_w"), cfg, geom, it)
        last_class[out.local_rows] = out.cls
        last_psi[out.local_rows] = out.psi_rad
        state.align_res_A = next_resolution(level.res_A, frc_curve,
                                            layout.view(buf, "mstep_w"), geom, cfg)
        n_used = int(layout.view(buf, "n")[0])
        ess_q = hist_quartiles(layout.view(buf, "ess_hist"), 1.0, max(k, 1.0 + 1e-9))
        pmax_q = hist_quartiles(layout.view(buf, "pmax_hist"), 0.0, 1.0)
        pose_q = hist_quartiles(layout.view(buf, "pose_mass_hist"), 0.0, 1.0)
        revisited = float(layout.view(buf, "revisited")[0])
        class_w = layout.view(buf, "class_w").copy()
        dt = time.perf_counter() - t_it
        record = {
            "iteration": it + 1, "kind": kind, "sub": sub + 1,
            "n_sub": c.online_em_iters if kind == "online" else c.final_full_iters,
            "n_particles": n_used, "seconds": dt, "estep_seconds": t_e,
            "mstep_seconds": t_m, "particles_per_s": n_used / max(dt, 1e-9),
            "ess_quartiles": ess_q, "pmax_quartiles": pmax_q, "pose_mass_quartiles": pose_q,
            "ess_hist": layout.view(buf, "ess_hist").copy(),
            "pmax_hist": layout.view(buf, "pmax_hist").copy(),
            "class_median_ess": np.array([
                hist_quartiles(h, 1.0, max(k, 1.0 + 1e-9))[1]
                for h in layout.view(buf, "class_ess_hist").reshape(k, CLASS_ESS_BINS)]),
            "class_counts": class_w, "mstep_weights": layout.view(buf, "mstep_w").copy(),
            "empty_classes": int((class_w == 0).sum()),
            "changed_class_frac": (float(layout.view(buf, "changed_class")[0]) / revisited
                                   if revisited else float("nan")),
            "mean_psi_change_deg": (float(layout.view(buf, "psi_change")[0]) / revisited
                                    if revisited else float("nan")),
            "mean_loglik": float(layout.view(buf, "loglik")[0]) / max(n_used, 1),
            "sigma2_used": s2, "sigma2_est": est.copy(), "sigma2_init": state.sigma2_init,
            "frc_res_A": mstep.frc_resolution(frc_curve, geom.shell_res_A),
            "shell_res_A": geom.shell_res_A,
            "reseeded_classes": len(reseeded),
            "estep_gflop": float(layout.view(buf, "flops")[0]) / 1e9,
            "reduce_seconds": t_red,
            **level.describe(), "next_align_res_A": state.align_res_A,
            "information_20A": info, "pose_marginal": int(marginal),
            **{key: float(val) for key, val in out.phase_seconds.items()},
        }
        state.sigma2_est = est
        state.iteration = it + 1
        state.history.append(record)
        log_memory(f"after iteration {it + 1}")
        if comm.rank == 0:
            logger.info(
                "iter %d/%d %s %d/%d: %d particles, %.2f s (%.0f particles/s); "
                "aligned at %.1f Å (box %d, %d rotations, %d shifts), next %.1f Å; "
                "ESS quartiles %.2f/%.2f/%.2f; best-class prob quartiles %.3f/%.3f/%.3f; "
                "best-pose mass quartiles %.3f/%.3f/%.3f; "
                "%d empty classes (%d re-seeded); class changed %.1f%%, "
                "mean psi change %.1f deg",
                it + 1, len(plan), "online-EM" if kind == "online" else "full", sub + 1,
                record["n_sub"], n_used, dt, record["particles_per_s"], level.res_A,
                level.work_box, level.psi_rad.size, level.shifts_px.shape[0],
                state.align_res_A, *ess_q, *pmax_q, *pose_q,
                record["empty_classes"], len(reseeded), 100 * record["changed_class_frac"],
                record["mean_psi_change_deg"])
        is_last = it == len(plan) - 1
        if on_iteration is not None:
            on_iteration(state, geom, record, is_last)
        if is_last:
            final = out
            com_final, alpha_final = com, alpha
        elif should_stop is not None and comm.any_true(bool(should_stop())):
            raise StopRequested(it + 1)
    if final is None:
        raise RuntimeError("checkpoint is past the last iteration: nothing to resume")
    shard.store.close()  # frees the particles (deletes a scratch file) before the outputs
    return finish(state, shard, geom, cfg, comm, final, com_final, alpha_final,
                  {"preprocess_s": t_pre, "total_s": time.perf_counter() - t0})


def finish(state: ModelState, shard: Shard, geom: Geometry, cfg: Config, comm: Comm,
           final: IterationOutput, com: np.ndarray, alpha: np.ndarray,
           timings: dict) -> RunResult:
    """Move poses with their recentred classes, sort classes, per-class statistics."""
    k = cfg.classify.n_classes
    # poses follow the final recentring (shift by R(psi) com) and verticalization (+alpha)
    psi = final.psi_rad + alpha[final.cls]
    t = final.shift_px.copy()
    cps, sps = np.cos(final.psi_rad), np.sin(final.psi_rad)
    cx, cy = com[final.cls, 0], com[final.cls, 1]
    t[:, 0] += cps * cx - sps * cy
    t[:, 1] += sps * cx + cps * cy
    scale = geom.work_pixel_A / geom.pixel_size_A
    counts_all = np.bincount(final.cls, minlength=k).astype(np.float64)
    counts_all = comm.allreduce_sum(counts_all)
    if cfg.classify.sort_by_size:
        order = np.argsort(-counts_all, kind="stable")
    else:
        order = np.arange(k)
    inv = np.empty(k, dtype=np.int64)
    inv[order] = np.arange(k)
    state.classes = state.classes[order]
    if state.frc is not None:
        state.frc = state.frc[order]
    if state.num is not None:
        state.num, state.den = state.num[:, order], state.den[:, order]
    counts = counts_all[order]
    frc_res = mstep.frc_resolution(state.frc, geom.shell_res_A)
    mine = ParticleResults(inv[final.cls], final.pmax, final.ess, np.mod(psi, 2 * np.pi),
                           t * scale, final.score, to_host(shard.half),
                           **{name: final.fit.get(name) for name in FIT})
    # per-class statistics over all ranks, without gathering the particles
    median_ess = grouped_median(mine.ess, mine.class_index, k, comm)
    post_sum = comm.allreduce_sum(np.bincount(mine.class_index, weights=mine.class_posterior,
                                              minlength=k)[:k].astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_post = np.where(counts > 0, post_sum / np.maximum(counts, 1), np.nan)
    particles = mine if comm.size == 1 else None
    return RunResult(geom, state, particles, order, counts, frc_res, median_ess, mean_post,
                     timings, mine, shard.start, shard.n_total)
