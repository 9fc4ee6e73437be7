"""Per-iteration diagnostic figures (rank 0): class grid, histograms, noise model.

The class grid, ESS and best-class-probability histograms and the noise model plot all
come from the reduced statistics of the iteration record; no pass over the particles.

Usage (the CLI, inside ``on_iteration`` on rank 0)::

    from cryoclass.report import iteration_diagnostics
    iteration_diagnostics(run_dir, state, geom, record, plots=cfg.output.plots)

writes ``run_dir/figures/{classes,ess,pmax,noise}_iter_NNN.png`` and the arrays behind
them (``iter_NNN.npz``, ``classes_latest.npz``) so that ``cryoclass report`` works for an
interrupted run. :func:`write_final_figures` redraws the final figures from ``run.h5``.

Each ``plot_*`` function returns what it drew, read back from the matplotlib artists
(bar heights, curve values, label texts), so tests check the figure's content. Figures
are drawn with matplotlib's object API on an Agg canvas: no pyplot, no global backend
switch, nothing configured at import (matplotlib itself is imported on first use).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FIGURE_KINDS = ("classes", "ess", "pmax", "noise")
_DPI = 100


# ----------------------------------------------------------------------- plotted data
@dataclass
class ClassGridData:
    """What the class grid shows, read back from the figure."""

    order: np.ndarray  # (K,) input class index of each tile, row-major
    count_labels: list[str]  # text on top of each tile, in tile order
    res_labels: list[str]  # bottom-left (FRC-0.5 resolution)
    ess_labels: list[str]  # bottom-right (median ESS)
    n_cols: int
    n_rows: int
    scale_bar_A: float
    scale_bar_rows: list[int]  # rows whose left-most tile carries the bar
    scale_bar_len_px: list[float] = field(default_factory=list)  # drawn length, in pixels
    tiles: np.ndarray | None = None  # (K, m, m) normalized tiles as displayed


@dataclass
class HistogramData:
    """Bars of a histogram figure, read back from the drawn step patch."""

    counts: np.ndarray  # (n_bins,)
    edges: np.ndarray  # (n_bins + 1,)
    quartiles: list[float]


@dataclass
class NoiseData:
    """Curves of the noise model figure, read back from the drawn lines."""

    freq_invA: np.ndarray  # (n_shells,) x values (1/Å)
    sigma: dict[str, np.ndarray]  # label -> (n_shells,) y values


# --------------------------------------------------------------------------- helpers
def _figure(width_in: float, height_in: float):
    """Create a matplotlib Figure on an Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG atomically (temporary name, then rename)."""
    from cryoclass.io.star import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # no half-written PNG when the disk is full
        fig.savefig(tmp, format="png", dpi=_DPI, pil_kwargs={"compress_level": 3})
    return path


def nice_length(target: float) -> float:
    """Return the 1, 2 or 5 x 10^n closest to ``target`` (> 0) on a log scale."""
    if not np.isfinite(target) or target <= 0:
        return 1.0
    exp = np.floor(np.log10(target))
    cands = np.array([1.0, 2.0, 5.0, 10.0]) * 10.0**exp
    return float(cands[np.argmin(np.abs(np.log(cands / target)))])


def _fmt_res(res_A: float) -> str:
    return f"{res_A:.1f} Å" if np.isfinite(res_A) and res_A > 0 else "-"


def _fmt_ess(ess: float) -> str:
    return f"{ess:.1f}" if np.isfinite(ess) else "-"


def _normalize_tiles(classes: np.ndarray) -> np.ndarray:
    """Each (m, m) tile mapped to [0, 1] by its own min and max (flat tiles -> 0.5)."""
    c = np.asarray(classes, dtype=np.float32)
    lo = c.min(axis=(1, 2), keepdims=True)
    hi = c.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    return np.where(span > 0, (c - lo) / np.where(span > 0, span, 1), 0.5).astype(np.float32)


def grid_shape(n_classes: int) -> tuple[int, int]:
    """(rows, columns) of the class grid: about twice as wide as tall, at most 10 wide."""
    n_cols = int(min(10, max(1, np.ceil(np.sqrt(2.0 * n_classes)))))
    n_rows = int(np.ceil(n_classes / n_cols))
    return n_rows, n_cols


# ------------------------------------------------------------------------ the figures
def _font(size_px: int):
    """DejaVu Sans (shipped with matplotlib) at ``size_px``; PIL's default otherwise."""
    from PIL import ImageFont

    key = int(size_px)
    if key not in _FONTS:
        try:
            import matplotlib

            ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            _FONTS[key] = ImageFont.truetype(str(ttf), key)
        except (OSError, ImportError):  # pragma: no cover - font missing
            _FONTS[key] = ImageFont.load_default()
    return _FONTS[key]


_FONTS: dict = {}


def tile_size_px(m: int) -> int:
    """Return the displayed tile size (px) for an ``m`` px class.

    112 px, or ``m`` between 112 and 160, or 160: readable labels, bounded PNG size.
    """
    return int(m if 112 <= m <= 160 else (160 if m > 160 else 112))


def plot_class_grid(path: Path, classes: np.ndarray, pixel_A: float, counts: np.ndarray,
                    frc_res_A: np.ndarray, median_ess: np.ndarray,
                    title: str = "") -> ClassGridData:
    """Draw the class-average grid, largest class first.

    Tiles are greyscale, each normalized to its own min..max, resampled to
    :func:`tile_size_px`; drawn with Pillow directly (hundreds of matplotlib text
    artists would cost about a second per iteration).

    Parameters
    ----------
    path : Path
        PNG to write.
    classes : (K, m, m) array
        Class images in any order; tiles follow ``counts`` (descending, stable).
    pixel_A : float
        Pixel size of ``classes`` (Å), for the scale bar.
    counts, frc_res_A, median_ess : (K,) arrays
        Per class, in the order of ``classes``: particle count (on top), FRC-0.5
        resolution in Å (bottom-left), median ESS (bottom-right).
    title : str

    Returns
    -------
    ClassGridData
        Tile order, the label texts as drawn, scale bar, and the image written.
    """
    from PIL import Image, ImageDraw

    classes = np.asarray(classes)
    k, m, _ = classes.shape
    counts = np.asarray(counts, dtype=np.float64)
    order = np.argsort(-counts, kind="stable")
    n_rows, n_cols = grid_shape(k)
    t = tile_size_px(m)
    zoom = t / m  # displayed px per class px
    fs = max(10, t // 10)
    gap = max(2, t // 40)
    head = fs + 6  # strip above each tile for the count
    title_h = fs + 10 if title else 0
    cw, ch = t + gap, t + head
    width, height = n_cols * cw + gap, title_h + n_rows * ch + gap
    canvas = Image.new("RGB", (width, height), "white")
    tiles = _normalize_tiles(classes[order])
    u8 = np.rint(tiles * 255.0).astype(np.uint8)
    resample = Image.Resampling.BILINEAR if t >= m else Image.Resampling.LANCZOS
    draw = ImageDraw.Draw(canvas)
    font, small = _font(fs), _font(max(9, fs - 1))
    if title:
        draw.text((width // 2, title_h // 2), title, fill="black", font=font, anchor="mm")
    count_l, res_l, ess_l = [], [], []
    for j in range(k):
        cls = order[j]
        r, c = divmod(j, n_cols)
        x0, y0 = gap + c * cw, title_h + r * ch + head
        tile = Image.fromarray(u8[j], mode="L")
        if t != m:
            tile = tile.resize((t, t), resample)
        canvas.paste(tile.convert("RGB"), (x0, y0))
        count_l.append(f"{int(round(counts[cls]))}")
        res_l.append(_fmt_res(float(frc_res_A[cls])))
        ess_l.append(_fmt_ess(float(median_ess[cls])))
        draw.text((x0 + t // 2, y0 - 2), count_l[-1], fill="black", font=font, anchor="md")
        draw.text((x0 + 3, y0 + t - 2), res_l[-1], fill=(255, 213, 74), font=small,
                  anchor="ld", stroke_width=1, stroke_fill="black")
        draw.text((x0 + t - 3, y0 + t - 2), ess_l[-1], fill=(127, 220, 255), font=small,
                  anchor="rd", stroke_width=1, stroke_fill="black")
    box_A = m * pixel_A
    bar_A = nice_length(box_A / 3.0)
    bar_len = bar_A / pixel_A * zoom  # displayed px
    rows = list(range(0, n_rows, 2))
    drawn_len = []
    for r in rows:
        xb = gap + 4
        y_mid = title_h + r * ch + head + t / 2
        ya, yb = int(round(y_mid - bar_len / 2)), int(round(y_mid + bar_len / 2))
        draw.rectangle((xb, ya, xb + 2, yb), fill=(255, 90, 90), outline="black")
        draw.text((xb + 6, ya), f"{bar_A:g} Å", fill=(255, 90, 90),
                  font=_font(max(9, fs - 2)), anchor="lt", stroke_width=1,
                  stroke_fill="black")
        drawn_len.append((yb - ya) / zoom)
    _save_pil(canvas, path)
    return ClassGridData(
        order=order, count_labels=count_l, res_labels=res_l, ess_labels=ess_l,
        n_cols=n_cols, n_rows=n_rows, scale_bar_A=bar_A, scale_bar_rows=rows,
        scale_bar_len_px=drawn_len, tiles=tiles)


def _save_pil(image, path: Path) -> Path:
    """Write a PIL image as PNG atomically."""
    from cryoclass.io.star import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=3)
    return path


class _HistogramFigure:
    """A histogram figure drawn once and updated in place on later calls (cheaper)."""

    def __init__(self):
        fig = _figure(4.0, 2.6)
        ax = fig.add_axes((0.15, 0.19, 0.8, 0.68))
        self.fig, self.ax = fig, ax
        self.patch = ax.stairs(np.zeros(1), np.array([0.0, 1.0]), fill=True, alpha=0.85)
        self.patch.set_zorder(3)  # bars over the quartile lines
        self.qlines = [ax.axvline(0.0, color="0.45", lw=0.8, ls=ls, zorder=1)
                       for ls in (":", "--", ":")]
        self.title = fig.text(0.5, 0.97, "", ha="center", va="top", fontsize=8)
        ax.set_ylabel("particles", fontsize=8)
        ax.tick_params(labelsize=7)

    def draw(self, path, hist, edges, xlabel, title, quartiles, color):
        self.patch.set_data(hist, edges)
        self.patch.set_color(color)
        for line, val in zip(self.qlines, list(quartiles) + [np.nan] * 3, strict=False):
            ok = val is not None and np.isfinite(val)
            line.set_visible(bool(ok))
            if ok:
                line.set_xdata([val, val])
        span = float(edges[-1] - edges[0])
        # a small margin keeps a spike in the first or last bin clear of the axis spine
        self.ax.set_xlim(edges[0] - 0.015 * span, edges[-1] + 0.015 * span)
        self.ax.set_ylim(0, max(1.0, float(hist.max()) * 1.05) if hist.size else 1.0)
        self.ax.set_xlabel(xlabel, fontsize=8)
        self.title.set_text(title)
        _save(self.fig, path)
        vals, drawn_edges, _ = self.patch.get_data()
        return np.asarray(vals, dtype=np.float64), np.asarray(drawn_edges, dtype=np.float64)


class _NoiseFigure:
    """The noise-model figure, drawn once and updated in place on later calls."""

    def __init__(self):
        from matplotlib.ticker import FuncFormatter

        fig = _figure(4.0, 2.6)
        ax = fig.add_axes((0.15, 0.19, 0.8, 0.68))
        self.fig, self.ax = fig, ax
        self.lines = {}
        # "used" drawn wide underneath: it often coincides with the estimate after annealing
        for label, col, lw in zip(NOISE_LABELS, ("#1f77b4", "#ff7f0e", "#2ca02c"),
                                  (3.0, 1.2, 1.2), strict=True):
            (self.lines[label],) = ax.plot([0.0], [1.0], color=col, lw=lw, label=label,
                                           alpha=0.6 if lw > 2 else 1.0)
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda f, _pos: f"{1.0 / f:.3g}" if f > 0 else "∞"))
        ax.set_xlabel("resolution (Å)", fontsize=8)
        ax.set_ylabel("noise sigma", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
        self.title = fig.text(0.5, 0.97, "", ha="center", va="top", fontsize=8)

    def draw(self, path, freq, sigmas, title):
        for label, y in zip(NOISE_LABELS, sigmas, strict=True):
            self.lines[label].set_data(freq, y)
        ys = np.concatenate(sigmas)
        ys = ys[np.isfinite(ys)]
        log = ys.size > 0 and bool(np.all(ys > 0))
        self.ax.set_yscale("log" if log else "linear")
        if log:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            self.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            self.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            self.ax.yaxis.set_minor_formatter(NullFormatter())
        if ys.size:
            lo, hi = float(ys.min()), float(ys.max())
            if log:
                self.ax.set_ylim(lo / 1.2, hi * 1.2)
            else:
                span = hi - lo if hi > lo else max(abs(hi), 1.0)
                self.ax.set_ylim(lo - 0.05 * span, hi + 0.05 * span)
        self.ax.set_xlim(0, float(freq.max()) if freq.size and freq.max() > 0 else 1.0)
        self.title.set_text(title)
        _save(self.fig, path)
        return {k: np.asarray(v.get_ydata(), dtype=float) for k, v in self.lines.items()}


_REUSED: dict = {}


def _reused(kind: str, cls):
    """Return the cached figure object for ``kind`` (created on first use)."""
    if kind not in _REUSED:
        _REUSED[kind] = cls()
    return _REUSED[kind]


def plot_histogram(path: Path, hist: np.ndarray, lo: float, hi: float, xlabel: str,
                   title: str = "", quartiles: list[float] | None = None,
                   color: str = "#3b75af") -> HistogramData:
    """Draw a stored histogram (``hist`` over ``n`` equal bins on [lo, hi]) as bars.

    Quartiles, when given, are drawn as vertical lines and printed in the title.

    Returns
    -------
    HistogramData
        The bar heights and edges read back from the drawn patch (equal to ``hist`` and
        its edges).
    """
    hist = np.asarray(hist, dtype=np.float64)
    edges = np.linspace(lo, hi, hist.size + 1)
    q = [float(v) for v in quartiles] if quartiles is not None else []
    if q:
        title = f"{title}  (quartiles {q[0]:.3g} / {q[1]:.3g} / {q[2]:.3g})".strip()
    vals, drawn = _reused(f"hist-{xlabel}", _HistogramFigure).draw(
        path, hist, edges, xlabel, title, q, color)
    return HistogramData(counts=vals, edges=drawn, quartiles=q)


NOISE_LABELS = ("sigma used", "sigma estimate", "sigma initial")


def plot_noise_model(path: Path, shell_res_A: np.ndarray, sigma2_used: np.ndarray,
                     sigma2_est: np.ndarray, sigma2_init: np.ndarray,
                     title: str = "") -> NoiseData:
    """Draw sqrt of the three noise spectra against spatial frequency, labelled in Å.

    Parameters
    ----------
    path : Path
    shell_res_A : (n_shells,) array
        Resolution of each shell (Å), ``inf`` at shell 0 (frequency 0).
    sigma2_used, sigma2_est, sigma2_init : (n_shells,) arrays
        Noise variance per shell: used for alignment this iteration, estimated from
        this iteration's residuals, estimated at the start.

    Returns
    -------
    NoiseData
        x (1/Å) and y (sigma) values of the three curves, read back from the lines.
    """
    res = np.asarray(shell_res_A, dtype=np.float64)
    with np.errstate(divide="ignore"):
        freq = np.where(np.isfinite(res) & (res > 0), 1.0 / res, 0.0)
    sig = [np.sqrt(np.clip(np.asarray(s2, dtype=np.float64), 0.0, None))
           for s2 in (sigma2_used, sigma2_est, sigma2_init)]
    fig = _reused("noise", _NoiseFigure)
    ys = fig.draw(path, freq, sig, title)
    return NoiseData(freq_invA=np.asarray(fig.lines[NOISE_LABELS[0]].get_xdata(), dtype=float),
                     sigma=ys)


def plot_resolution_schedule(path: Path, history: list[dict]) -> Path | None:
    """Draw the alignment resolution of each iteration and the classes' FRC-0.5 median.

    Returns None when the records carry no resolution level (runs before the schedule).
    """
    recs = [r for r in history if "align_res_A" in r]
    if not recs:
        return None
    it = np.array([int(r["iteration"]) for r in recs])
    res = np.array([float(r["align_res_A"]) for r in recs])
    fig = _figure(5.0, 3.0)
    ax = fig.add_subplot(111)
    ax.plot(it, 1.0 / res, "o-", label="aligned at (E-step level)")
    frc = []
    for r in recs:
        v = np.asarray(r.get("frc_res_A", []), dtype=float)
        v = v[np.isfinite(v)]
        frc.append(1.0 / np.median(v) if v.size else np.nan)
    ax.plot(it, frc, "s--", ms=3, label="median class FRC-0.5")
    ticks = ax.get_yticks()
    ax.set_yticks(ticks)
    ax.set_yticklabels([_fmt_res(1.0 / t) if t > 0 else "" for t in ticks])
    ax.set_xlabel("iteration")
    ax.set_ylabel("resolution (Å)")
    ax.set_title("resolution schedule")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------- per-iteration API
def figure_paths(outdir: Path, tag: str) -> dict[str, Path]:
    """``{kind: outdir/figures/<kind>_<tag>.png}`` for the four figure kinds."""
    d = Path(outdir) / "figures"
    return {kind: d / f"{kind}_{tag}.png" for kind in FIGURE_KINDS}


def _kind_title(record: dict) -> str:
    kind = str(record.get("kind", ""))
    name = "online-EM" if kind == "online" else kind
    sub, n_sub = record.get("sub"), record.get("n_sub")
    part = f" {int(sub)}/{int(n_sub)}" if sub is not None and n_sub is not None else ""
    return f"iteration {int(record['iteration'])} ({name}{part})"


def draw_figures(paths: dict[str, Path], classes: np.ndarray, pixel_A: float, record: dict,
                 counts: np.ndarray | None = None, frc_res_A: np.ndarray | None = None,
                 median_ess: np.ndarray | None = None, title: str = "") -> dict:
    """Draw the four figures from a record; per-class arrays default to the record's.

    Returns
    -------
    dict
        ``{kind: ClassGridData | HistogramData | NoiseData}``.
    """
    k = np.asarray(classes).shape[0]
    counts = np.asarray(record["class_counts"] if counts is None else counts)
    frc_res_A = np.asarray(record["frc_res_A"] if frc_res_A is None else frc_res_A)
    median_ess = np.asarray(record["class_median_ess"] if median_ess is None else median_ess)
    n = int(round(float(record.get("n_particles", np.sum(record["ess_hist"])))))
    data = {}
    data["classes"] = plot_class_grid(
        paths["classes"], classes, pixel_A, counts, frc_res_A, median_ess,
        title=f"{title}: {k} classes, {n} particles")
    data["ess"] = plot_histogram(
        paths["ess"], record["ess_hist"], 1.0, max(float(k), 1.0 + 1e-9),
        "effective sample size over classes", title=f"{title}: ESS",
        quartiles=list(np.asarray(record["ess_quartiles"], dtype=float)))
    data["pmax"] = plot_histogram(
        paths["pmax"], record["pmax_hist"], 0.0, 1.0, "probability of the best class",
        title=f"{title}: best-class probability",
        quartiles=list(np.asarray(record["pmax_quartiles"], dtype=float)), color="#c4622d")
    data["noise"] = plot_noise_model(
        paths["noise"], record["shell_res_A"], record["sigma2_used"], record["sigma2_est"],
        record["sigma2_init"], title=f"{title}: noise model")
    return data


def write_iteration_figures(outdir: Path, state_classes: np.ndarray, geom_like,
                            record: dict, plotted: dict | None = None) -> dict[str, Path]:
    """Write the four figures of one iteration into ``outdir/figures``.

    Parameters
    ----------
    outdir : Path
        Run directory.
    state_classes : (K, m, m) array
        Class images in the run's internal order (the grid sorts them by
        ``record["class_counts"]``).
    geom_like : object
        Has ``work_pixel_A`` (pixel size of the class images, Å).
    record : dict
        The iteration record of :func:`cryoclass.em.classify`.
    plotted : dict, optional
        Filled with what was drawn (``{kind: ClassGridData | HistogramData |
        NoiseData}``), for tests and the report.

    Returns
    -------
    dict
        ``{kind: path}`` for kind in ``classes``, ``ess``, ``pmax``, ``noise``; files
        ``<kind>_iter_NNN.png``.
    """
    t0 = time.perf_counter()
    it = int(record["iteration"])
    paths = figure_paths(outdir, f"iter_{it:03d}")
    data = draw_figures(paths, state_classes, float(geom_like.work_pixel_A), record,
                        title=_kind_title(record))
    if plotted is not None:
        plotted.update(data)
    logger.debug("iteration %d figures written in %.3f s", it, time.perf_counter() - t0)
    return paths


# ---------------------------------------------------------- data behind the figures
_SCALAR_TYPES = (int, float, np.integer, np.floating, bool, np.bool_)


def _record_arrays(record: dict) -> dict[str, np.ndarray]:
    out = {}
    for key, val in record.items():
        if isinstance(val, str):
            out[key] = np.array(val)
        elif isinstance(val, _SCALAR_TYPES) or isinstance(val, (list, tuple, np.ndarray)):
            out[key] = np.asarray(val, dtype=np.float64)
    return out


def _atomic_npz(path: Path, **arrays) -> None:
    from cryoclass.io.star import atomic_output

    with atomic_output(path, "wb") as fh:
        np.savez(fh, **arrays)


def save_iteration_data(outdir: Path, state_classes: np.ndarray, geom_like, record: dict,
                        extra: dict | None = None) -> Path:
    """Store the record (``figures/iter_NNN.npz``) and the latest classes.

    ``figures/classes_latest.npz`` (overwritten each iteration) holds ``images`` (K, m, m)
    float32 in internal order, ``pixel_A``, ``iteration`` and, when present on
    ``geom_like``, ``mask_radius_px``. Together they let the report describe a run that
    never wrote run.h5.
    """
    from cryoclass.report.metrics import particle_radius_px

    d = Path(outdir) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    it = int(record["iteration"])
    arrays = _record_arrays(record)
    for key, val in (extra or {}).items():
        arrays[key] = np.asarray(val)
    path = d / f"iter_{it:03d}.npz"
    _atomic_npz(path, **arrays)
    latest = {"images": np.asarray(state_classes, dtype=np.float32),
              "pixel_A": np.float64(geom_like.work_pixel_A), "iteration": np.int64(it),
              "mask_radius_px": np.float64(particle_radius_px(geom_like))}
    _atomic_npz(d / "classes_latest.npz", **latest)
    return path


def iteration_diagnostics(outdir: Path, state, geom_like, record: dict,
                          plots: bool = True) -> dict[str, Path]:
    """Everything rank 0 does for diagnostics after an iteration; logs the time taken.

    Call it from ``classify(..., on_iteration=...)`` on rank 0 only. Writes the figures
    (unless ``plots`` is false) and the data behind them; never raises for a plotting
    failure (it is logged): diagnostics must not kill a run.

    Returns
    -------
    dict
        ``{kind: path}`` of the figures written (empty when ``plots`` is false).
    """
    t0 = time.perf_counter()
    paths: dict[str, Path] = {}
    try:
        if plots:
            paths = write_iteration_figures(outdir, state.classes, geom_like, record)
        dt_plot = time.perf_counter() - t0
        save_iteration_data(outdir, state.classes, geom_like, record,
                            extra={"diagnostics_seconds": dt_plot})
    except Exception:  # noqa: BLE001 - a figure must never abort the classification
        logger.warning("iteration %s: diagnostics failed", record.get("iteration"),
                       exc_info=True)
        return paths
    dt = time.perf_counter() - t0
    it_s = float(record.get("seconds", float("nan")))
    logger.info("iteration %d diagnostics: %.2f s (%.1f%% of the iteration's %.2f s)",
                int(record["iteration"]), dt, 100.0 * dt / it_s if it_s > 0 else float("nan"),
                it_s)
    return paths


class DiagnosticsWriter:
    """Per-iteration diagnostics drawn on a background thread of rank 0.

    Calling the writer copies what it needs (class images, record, pixel size and
    particle radius; microseconds) and queues :func:`iteration_diagnostics` on one
    worker thread, so the figures of iteration *i* are drawn while iteration *i + 1*
    computes (NumPy/CuPy release the GIL in the heavy kernels). At most ``max_pending``
    iterations wait; beyond that the caller blocks, so memory stays bounded. The first
    call's imports (matplotlib, fonts) are started at construction.

    Usage (the CLI, rank 0)::

        diag = DiagnosticsWriter(run_dir, plots=cfg.output.plots)
        ... classify(..., on_iteration=lambda st, geom, rec, last: diag(st, geom, rec))
        diag.close()   # waits for the last figures; also at interpreter exit

    Attributes
    ----------
    seconds : dict[int, float]
        Worker time spent per iteration.
    """

    def __init__(self, outdir: Path, plots: bool = True, max_pending: int = 2):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.outdir = Path(outdir)
        self.plots = plots
        self.seconds: dict[int, float] = {}
        self._slots = threading.BoundedSemaphore(max(1, max_pending))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diagnostics")
        self._futures: list = []
        if plots:
            self._futures.append(self._pool.submit(_warm_up))

    def __call__(self, state, geom_like, record: dict, is_last: bool = False) -> None:
        """Queue the diagnostics of one iteration (arguments are copied)."""
        from types import SimpleNamespace

        snap_state = SimpleNamespace(classes=np.array(state.classes, copy=True))
        snap_geom = SimpleNamespace(
            work_pixel_A=float(geom_like.work_pixel_A),
            work_box=int(getattr(geom_like, "work_box", snap_state.classes.shape[-1])),
            pixel_size_A=getattr(geom_like, "pixel_size_A", None),
            particle_radius_px=getattr(geom_like, "particle_radius_px", None))
        snap_rec = {key: (np.array(val, copy=True) if isinstance(val, np.ndarray | list)
                          else val) for key, val in record.items()}
        t0 = time.perf_counter()
        self._slots.acquire()
        waited = time.perf_counter() - t0
        if waited > 0.05:
            logger.info("iteration %s waited %.2f s for the diagnostics of earlier "
                        "iterations", record.get("iteration"), waited)
        fut = self._pool.submit(self._run, snap_state, snap_geom, snap_rec)
        fut.add_done_callback(lambda _f: self._slots.release())
        self._futures = [f for f in self._futures if not f.done()] + [fut]

    def _run(self, state, geom_like, record) -> None:
        t0 = time.perf_counter()
        iteration_diagnostics(self.outdir, state, geom_like, record, plots=self.plots)
        self.seconds[int(record["iteration"])] = time.perf_counter() - t0

    def close(self) -> None:
        """Wait for every queued iteration; then the writer is done."""
        for fut in self._futures:
            fut.result()
        self._pool.shutdown(wait=True)
        if self.seconds:
            tot = sum(self.seconds.values())
            logger.info("diagnostics: %.2f s in all for %d iterations (%.3f s each, on a "
                        "background thread)", tot, len(self.seconds), tot / len(self.seconds))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _warm_up() -> None:
    """Import matplotlib and build the reused figures ahead of the first iteration."""
    try:
        _reused("noise", _NoiseFigure)
        _font(12)
    except Exception:  # noqa: BLE001 - only a speed-up
        logger.debug("diagnostics warm-up failed", exc_info=True)


# ---------------------------------------------------------------------- final figures
def read_final(run_dir: Path) -> dict:
    """Classes and the last iteration's record from ``run_dir/run.h5``."""
    import h5py

    from cryoclass.errors import InputError

    path = Path(run_dir) / "run.h5"
    if not path.is_file():
        raise InputError(f"{path}: not found (is the run finished?)")
    try:
        with h5py.File(path, "r") as f:
            gc = f["classes"]
            out = {key: gc[key][()] for key in gc if isinstance(gc[key], h5py.Dataset)}
            last = {}
            if "iterations" in f:
                for key, ds in f["iterations"].items():
                    val = ds[-1]
                    last[key] = val.decode() if isinstance(val, bytes) else val
            attrs = {key: f.attrs[key] for key in f.attrs}
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    out["record"] = last
    out["attrs"] = attrs
    return out


def write_final_figures(run_dir: Path, plotted: dict | None = None) -> dict[str, Path]:
    """Redraw the final figures (``figures/<kind>_final.png``) from ``run.h5``.

    The class grid uses the final (sorted) classes with their final counts, FRC
    resolutions and median ESS; histograms and noise model come from the last iteration.

    Returns
    -------
    dict
        ``{kind: path}``; kinds without data in run.h5 are left out.
    """
    fin = read_final(run_dir)
    attrs = fin["attrs"]
    pixel_A = float(attrs.get("work_pixel_size_A", attrs.get("pixel_size_A", 1.0)))
    images = np.asarray(fin["images"])
    k = images.shape[0]
    counts = np.asarray(fin.get("count", np.zeros(k)), dtype=np.float64)
    res = np.asarray(fin.get("frc_res_A", np.full(k, np.inf)), dtype=np.float64)
    ess = np.asarray(fin.get("median_ess", np.full(k, np.nan)), dtype=np.float64)
    paths = figure_paths(run_dir, "final")
    rec = fin["record"]
    data = {}
    data["classes"] = plot_class_grid(paths["classes"], images, pixel_A, counts, res, ess,
                                      title=f"final: {k} classes, {int(counts.sum())} "
                                            "particles")
    out = {"classes": paths["classes"]}
    if "ess_hist" in rec:
        data["ess"] = plot_histogram(paths["ess"], rec["ess_hist"], 1.0,
                                     max(float(k), 1.0 + 1e-9),
                                     "effective sample size over classes",
                                     title="final: ESS", quartiles=list(rec["ess_quartiles"]))
        out["ess"] = paths["ess"]
    if "pmax_hist" in rec:
        data["pmax"] = plot_histogram(paths["pmax"], rec["pmax_hist"], 0.0, 1.0,
                                      "probability of the best class",
                                      title="final: best-class probability",
                                      quartiles=list(rec["pmax_quartiles"]), color="#c4622d")
        out["pmax"] = paths["pmax"]
    if all(key in rec for key in ("sigma2_used", "sigma2_est", "sigma2_init")):
        shell_res = rec.get("shell_res_A", fin.get("shell_res_A"))
        data["noise"] = plot_noise_model(paths["noise"], shell_res, rec["sigma2_used"],
                                         rec["sigma2_est"], rec["sigma2_init"],
                                         title="final: noise model")
        out["noise"] = paths["noise"]
    if plotted is not None:
        plotted.update(data)
    return out
