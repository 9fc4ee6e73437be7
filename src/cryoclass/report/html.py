"""The run report: one static, self-contained ``RUN/report.html``.

Usage::

    cryoclass report RUN          # the CLI calls main_report(RUN)

The page needs no server and loads nothing from the network: the final class grid and
the per-class thumbnails are embedded as base64 PNG, the per-iteration figures are
referenced relatively (``figures/..._iter_NNN.png``), and the small sorting/slider
script and the style sheet are inline.

Sources, in order: ``run.h5`` (a finished run); otherwise ``checkpoint.h5`` and the data
the per-iteration diagnostics leave in ``figures/`` (``iter_NNN.npz``,
``classes_latest.npz``), so an interrupted run gets a report of its last completed
iteration; otherwise the PNG files alone. With none of these, :class:`~cryoclass.errors.InputError`.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoclass.errors import InputError
from cryoclass.report.figures import (
    FIGURE_KINDS,
    plot_class_grid,
    plot_resolution_schedule,
    write_final_figures,
)
from cryoclass.report.metrics import METRIC_INFO, class_metrics

logger = logging.getLogger(__name__)

_ITER_RE = re.compile(r"^(classes|ess|pmax|noise)_iter_(\d+)\.png$")
_EVENTS_TAIL_LINES = 200


@dataclass
class RunData:
    """What the report shows, gathered from whatever the run left behind."""

    run_dir: Path
    source: str  # "run.h5", "figures data" or "figures only"
    complete: bool
    images: np.ndarray | None = None  # (K, m, m), display order (largest first)
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # per class, (K,) each
    history: list[dict] = field(default_factory=list)  # one record per iteration
    attrs: dict = field(default_factory=dict)  # provenance
    config_toml: str = ""
    pixel_A: float = float("nan")
    figure_iterations: list[int] = field(default_factory=list)
    diagnostics_seconds: dict[int, float] = field(default_factory=dict)


# ------------------------------------------------------------------------ reading
def _decode(val):
    """Plain Python value of an HDF5/npz scalar (bytes -> str, 0-d array -> item)."""
    if isinstance(val, (np.ndarray, np.generic)) and np.ndim(val) == 0:
        val = val.item()
    if isinstance(val, bytes):
        return val.decode()
    return val


def _history_from_h5(group) -> list[dict]:
    """Per-iteration records from the stacked ``/iterations`` datasets."""
    cols = {key: group[key][()] for key in group}
    if not cols:
        return []
    n = min(len(v) for v in cols.values())
    out = []
    for i in range(n):
        rec = {}
        for key, arr in cols.items():
            val = arr[i]
            rec[key] = _decode(val) if np.ndim(val) == 0 else np.asarray(val)
        out.append(rec)
    return out


def particle_radius_from_config(config_toml: str, box_px: int, pixel_size_A: float,
                       work_box: int, work_pixel_A: float) -> float:
    """Return the particle radius in working pixels, read from the config as the engine does.

    ``preprocess.particle_diameter_A``, else ``mask.inner_diameter_A``, else 0.8 of the
    box (the engine's default; ``"auto"`` in the dumped config); capped at 0.45 of the
    working box.
    """
    try:
        cfg = tomllib.loads(config_toml) if config_toml else {}
    except tomllib.TOMLDecodeError:
        cfg = {}
    def number(section: str, key: str) -> float | None:
        val = cfg.get(section, {}).get(key)  # "auto" (None) or a number
        return float(val) if isinstance(val, int | float) and val > 0 else None

    diam_A = number("preprocess", "particle_diameter_A")
    if diam_A is None:
        diam_A = number("mask", "inner_diameter_A")
    if diam_A is None:
        diam_A = 0.8 * box_px * pixel_size_A
    return float(min(0.5 * float(diam_A) / work_pixel_A, 0.45 * work_box))


def _read_h5(run_dir: Path) -> RunData:
    import h5py

    path = run_dir / "run.h5"
    try:
        with h5py.File(path, "r") as f:
            attrs = {key: _decode(f.attrs[key]) for key in f.attrs}
            gc = f["classes"]
            cls = {key: gc[key][()] for key in gc if isinstance(gc[key], h5py.Dataset)}
            stored_metrics = {}
            if "metrics" in gc:
                stored_metrics = {key: gc["metrics"][key][()] for key in gc["metrics"]}
            history = _history_from_h5(f["iterations"]) if "iterations" in f else []
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    images = np.asarray(cls["images"], dtype=np.float64)
    k, m, _ = images.shape
    pixel_A = float(attrs.get("work_pixel_size_A", attrs.get("pixel_size_A", 1.0)))
    cfg_text = str(attrs.pop("config_toml", ""))
    radius = particle_radius_from_config(cfg_text, int(attrs.get("box_px", m)),
                                float(attrs.get("pixel_size_A", pixel_A)), m, pixel_A)
    stats = class_metrics(images, pixel_A, radius, cls.get("frc"), cls.get("shell_res_A"),
                          counts=cls.get("count"), median_ess=cls.get("median_ess"),
                          mean_posterior=cls.get("mean_posterior"))
    if "frc_res_A" in cls:
        stats["frc_res_A"] = np.asarray(cls["frc_res_A"], dtype=np.float64)
    stats.update({key: np.asarray(v, dtype=np.float64) for key, v in stored_metrics.items()})
    return RunData(run_dir, "run.h5", True, images, stats, history, attrs, cfg_text, pixel_A)


def _figures_data(run_dir: Path) -> tuple[list[dict], dict | None]:
    """Read the records and latest classes saved by the per-iteration diagnostics."""
    fig_dir = run_dir / "figures"
    history = []
    for p in sorted(fig_dir.glob("iter_*.npz")) if fig_dir.is_dir() else []:
        try:
            with np.load(p) as z:
                history.append({key: _decode(z[key]) if z[key].ndim == 0 else z[key]
                                for key in z.files})
        except (OSError, ValueError):
            logger.warning("%s: unreadable, skipped", p)
    latest = None
    path = fig_dir / "classes_latest.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                latest = {"images": np.asarray(z["images"], dtype=np.float64),
                          "pixel_A": float(z["pixel_A"]), "iteration": int(z["iteration"]),
                          "radius_px": float(z["mask_radius_px"])
                          if "mask_radius_px" in z.files else None, "frc": None}
        except (OSError, ValueError, KeyError):
            logger.warning("%s: unreadable, skipped", path)
    return history, latest


def _checkpoint_data(run_dir: Path) -> dict | None:
    """Read ``checkpoint.h5`` (history, classes, FRC, config) when there is one."""
    path = run_dir / "checkpoint.h5"
    if not path.is_file():
        return None
    from cryoclass.io.checkpoint import load_checkpoint

    try:
        state, attrs = load_checkpoint(path)
    except InputError as exc:
        logger.warning("%s", exc)
        return None
    attrs = {key: _decode(val) for key, val in attrs.items()}
    return {"history": state.history, "images": np.asarray(state.classes, np.float64),
            "frc": state.frc, "iteration": int(state.iteration),
            "config_toml": str(attrs.pop("config_toml", "")), "attrs": attrs}


def _latest_classes(latest: dict, rec: dict, cfg_text: str) -> tuple[np.ndarray, dict, float]:
    """Classes of an unfinished run, largest first, with their statistics."""
    images = latest["images"]
    k, m, _ = images.shape
    pixel_A = latest.get("pixel_A")
    if pixel_A is None:  # shell 1 spans the whole box: its resolution is the box size
        pixel_A = float(np.asarray(rec["shell_res_A"])[1]) / m
    radius = latest.get("radius_px")
    if radius is None:
        radius = particle_radius_from_config(cfg_text, m, pixel_A, m, pixel_A)
    nan = np.full(k, np.nan)
    counts = np.asarray(rec.get("class_counts", nan), dtype=np.float64)
    stats = class_metrics(images, pixel_A, radius, latest.get("frc"), counts=counts,
                          median_ess=rec.get("class_median_ess", nan), mean_posterior=nan)
    stats["frc_res_A"] = np.asarray(rec.get("frc_res_A", nan), dtype=np.float64)
    order = np.argsort(-np.nan_to_num(counts, nan=-1.0), kind="stable")
    return images[order], {key: np.asarray(v)[order] for key, v in stats.items()}, pixel_A


def _read_interrupted(run_dir: Path) -> RunData | None:
    """Combine checkpoint.h5 and the figures data of a run without run.h5."""
    fig_hist, fig_latest = _figures_data(run_dir)
    ck = _checkpoint_data(run_dir)
    if not fig_hist and fig_latest is None and ck is None:
        return None
    by_it = {int(r.get("iteration", 0)): r for r in fig_hist}
    sources = ["figures data"] if fig_hist or fig_latest else []
    cfg_text, attrs = "", {}
    latest = fig_latest
    if ck is not None:
        sources.insert(0, "checkpoint.h5")
        by_it.update({int(r.get("iteration", 0)): r for r in ck["history"]})
        cfg_text, attrs = ck["config_toml"], dict(ck["attrs"])
        if latest is None or ck["iteration"] >= latest["iteration"]:
            latest = {key: ck[key] for key in ("images", "frc", "iteration")}
    if not cfg_text and (run_dir / "config.toml").is_file():
        cfg_text = (run_dir / "config.toml").read_text()
    history = [by_it[i] for i in sorted(by_it)]
    data = RunData(run_dir, " + ".join(sources), False, history=history, config_toml=cfg_text,
                   attrs=attrs)
    if latest is not None:
        it = latest["iteration"]
        rec = by_it.get(it, history[-1] if history else {})
        data.images, data.stats, data.pixel_A = _latest_classes(latest, rec, cfg_text)
        data.attrs["classes_from_iteration"] = it
    return data


def load_run(run_dir: Path) -> RunData:
    """Gather everything the report shows from a (possibly interrupted) run directory.

    Raises
    ------
    InputError
        When the directory does not exist or holds neither run.h5 nor diagnostics.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    if (run_dir / "run.h5").is_file():
        data = _read_h5(run_dir)
    else:
        data = _read_interrupted(run_dir)
        if data is None:
            pngs = list((run_dir / "figures").glob("*_iter_*.png")) \
                if (run_dir / "figures").is_dir() else []
            if not pngs:
                raise InputError(f"{run_dir}: nothing to report: no run.h5 and no "
                                 "figures/ from a previous run (was it started with "
                                 "this directory as --out?)")
            data = RunData(run_dir, "figures only", False)
    iters = set()
    fig_dir = run_dir / "figures"
    if fig_dir.is_dir():
        for p in fig_dir.iterdir():
            mt = _ITER_RE.match(p.name)
            if mt:
                iters.add(int(mt.group(2)))
        for p in fig_dir.glob("iter_*.npz"):
            try:
                with np.load(p) as z:
                    if "diagnostics_seconds" in z.files:
                        data.diagnostics_seconds[int(z["iteration"])] = \
                            float(z["diagnostics_seconds"])
            except (OSError, ValueError, KeyError):
                continue
    data.figure_iterations = sorted(iters)
    return data


# ------------------------------------------------------------------------ rendering
_CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:1.5em;color:#222;
max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f3f3f3;position:sticky;top:0}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e6eefc}
th.asc::after{content:' \\25B2'}th.desc::after{content:' \\25BC'}
td.l,th.l{text-align:left}img.thumb{width:56px;height:56px;image-rendering:auto}
pre{background:#f7f7f7;border:1px solid #ddd;padding:8px;font-size:12px;overflow:auto;
max-height:30em}.warn{background:#fff4d6;border:1px solid #e8c76a;padding:6px 10px}
.figs img{max-width:100%;border:1px solid #ddd;margin:2px}.muted{color:#777}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
"""

_JS = """
function sortTable(th){
  var table=th.closest('table'), tbody=table.tBodies[0];
  var idx=Array.prototype.indexOf.call(th.parentNode.children, th);
  var asc=!th.classList.contains('asc');
  Array.prototype.forEach.call(th.parentNode.children,function(h){
    h.classList.remove('asc');h.classList.remove('desc');});
  th.classList.add(asc?'asc':'desc');
  var rows=Array.prototype.slice.call(tbody.rows);
  rows.sort(function(a,b){
    var x=parseFloat(a.cells[idx].getAttribute('data-v'));
    var y=parseFloat(b.cells[idx].getAttribute('data-v'));
    if(isNaN(x)&&isNaN(y))return 0; if(isNaN(x))return 1; if(isNaN(y))return -1;
    return asc?x-y:y-x;});
  rows.forEach(function(r){tbody.appendChild(r);});
}
function showIter(v){
  var its=JSON.parse(document.getElementById('iters').textContent);
  var it=its[v], tag=('00'+it).slice(-3);
  document.getElementById('iterlabel').textContent='iteration '+it;
  document.querySelectorAll('img.iterfig').forEach(function(img){
    img.src='figures/'+img.getAttribute('data-kind')+'_iter_'+tag+'.png';});
}
"""


def _png_b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _thumbnails(images: np.ndarray) -> list[str]:
    """Base64 PNG data URIs of each class, normalized to its own min..max."""
    from PIL import Image

    out = []
    for img in np.asarray(images, dtype=np.float64):
        lo, hi = float(img.min()), float(img.max())
        u8 = np.rint((img - lo) / (hi - lo) * 255 if hi > lo else np.full(img.shape, 128.0))
        buf = io.BytesIO()
        Image.fromarray(u8.astype(np.uint8), mode="L").save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def _num(val, fmt: str = "{:.3g}") -> tuple[str, str]:
    """(data-v, shown text) of a number; NaN shows '-', inf shows '∞'."""
    try:
        v = float(val)
    except (TypeError, ValueError):
        return "NaN", html.escape(str(val))
    if np.isnan(v):
        return "NaN", "-"
    if np.isinf(v):
        return ("Infinity" if v > 0 else "-Infinity"), ("∞" if v > 0 else "-∞")
    return repr(v), fmt.format(v)


_CLASS_COLUMNS = [
    ("count", "count", "{:.0f}"),
    ("frc_res_A", "FRC-0.5 res (Å)", "{:.1f}"),
    ("median_ess", "median ESS", "{:.2f}"),
    ("mean_posterior", "mean posterior", "{:.3f}"),
    ("outside_power_frac", "outside power", "{:.3f}"),
    ("center_offset_A", "centre offset (Å)", "{:.1f}"),
    ("radius_of_gyration_A", "Rg (Å)", "{:.1f}"),
    ("contrast", "contrast", "{:.2f}"),
    ("frc_area", "FRC area", "{:.3f}"),
]


def _class_table(data: RunData) -> str:
    k = data.images.shape[0]
    thumbs = _thumbnails(data.images)
    cols = [c for c in _CLASS_COLUMNS if c[0] in data.stats]
    head = ['<th onclick="sortTable(this)" title="class number in the outputs">class</th>',
            '<th class="l">image</th>']
    for key, label, _ in cols:
        unit, what, good = METRIC_INFO.get(key, ("", key, ""))
        tip = html.escape(f"{what}; good: {good}", quote=True)
        head.append(f'<th onclick="sortTable(this)" title="{tip}">{html.escape(label)}</th>')
    rows = []
    for j in range(k):
        cells = [f'<td data-v="{j + 1}">{j + 1}</td>',
                 f'<td class="l"><img class="thumb" alt="class {j + 1}" src="{thumbs[j]}"></td>']
        for key, _label, fmt in cols:
            v, text = _num(data.stats[key][j], fmt)
            cells.append(f'<td data-v="{v}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<table class="sortable" id="class-table"><thead><tr>' + "".join(head)
            + "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _kind_text(rec: dict) -> str:
    kind = str(rec.get("kind", ""))
    name = "online-EM" if kind == "online" else kind
    if "sub" in rec and "n_sub" in rec:
        return f"{name} {int(rec['sub'])}/{int(rec['n_sub'])}"
    return name


def _history_table(data: RunData) -> str:
    head = ["iteration", "kind", "aligned at (Å)", "E-step box", "rotations", "shifts",
            "particles", "time (s)", "E-step (s)", "M-step (s)",
            "particles/s", "ESS q1", "ESS median", "ESS q3", "best-prob q1",
            "best-prob median", "best-prob q3", "best-pose mass median", "empty classes",
            "class changed (%)",
            "mean psi change (deg)", "diagnostics (s)"]
    rows = []
    for rec in data.history:
        it = int(rec.get("iteration", 0))
        ess = np.asarray(rec.get("ess_quartiles", [np.nan] * 3), dtype=float)
        pm = np.asarray(rec.get("pmax_quartiles", [np.nan] * 3), dtype=float)
        vals = [(it, "{:.0f}"), None, (rec.get("align_res_A", np.nan), "{:.1f}"),
                (rec.get("level_box_px", np.nan), "{:.0f}"),
                (rec.get("level_rotations", np.nan), "{:.0f}"),
                (rec.get("level_shifts", np.nan), "{:.0f}"),
                (rec.get("n_particles", np.nan), "{:.0f}"),
                (rec.get("seconds", np.nan), "{:.2f}"),
                (rec.get("estep_seconds", np.nan), "{:.2f}"),
                (rec.get("mstep_seconds", np.nan), "{:.2f}"),
                (rec.get("particles_per_s", np.nan), "{:.0f}"),
                (ess[0], "{:.2f}"), (ess[1], "{:.2f}"), (ess[2], "{:.2f}"),
                (pm[0], "{:.3f}"), (pm[1], "{:.3f}"), (pm[2], "{:.3f}"),
                (np.asarray(rec.get("pose_mass_quartiles", [np.nan] * 3), dtype=float)[1],
                 "{:.3f}"),
                (rec.get("empty_classes", np.nan), "{:.0f}"),
                (100 * float(rec.get("changed_class_frac", np.nan)), "{:.1f}"),
                (rec.get("mean_psi_change_deg", np.nan), "{:.1f}"),
                (data.diagnostics_seconds.get(it, np.nan), "{:.2f}")]
        cells = []
        for v in vals:
            if v is None:
                cells.append(f'<td class="l">{html.escape(_kind_text(rec))}</td>')
            else:
                dv, text = _num(*v)
                cells.append(f'<td data-v="{dv}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    ths = "".join(f'<th onclick="sortTable(this)">{html.escape(h)}</th>' for h in head)
    return ('<table class="sortable" id="history-table"><thead><tr>' + ths
            + "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _figure_viewer(data: RunData) -> str:
    its = data.figure_iterations
    if not its:
        return '<p class="muted">no per-iteration figures (run with plots off?)</p>'
    last = its[-1]
    imgs = []
    for kind in FIGURE_KINDS:
        rel = f"figures/{kind}_iter_{last:03d}.png"
        imgs.append(f'<img class="iterfig" data-kind="{kind}" alt="{kind}" src="{rel}">')
    links = " ".join(
        f'<a href="figures/classes_iter_{i:03d}.png">{i}</a>' for i in its)
    return (f'<script type="application/json" id="iters">{its}</script>'
            f'<p><input type="range" min="0" max="{len(its) - 1}" value="{len(its) - 1}" '
            f'oninput="showIter(this.value)" style="width:60%"> '
            f'<b id="iterlabel">iteration {last}</b></p>'
            f'<div class="figs">{imgs[0]}<div class="row">{"".join(imgs[1:])}</div></div>'
            f'<p class="muted">class grids of every iteration: {links}</p>')


def _timings(data: RunData) -> str:
    h = data.history
    rows = []

    def add(name, val, fmt="{:.2f}"):
        _, text = _num(val, fmt)
        rows.append(f'<tr><td class="l">{html.escape(name)}</td><td>{text}</td></tr>')

    if h:
        sec = np.array([float(r.get("seconds", np.nan)) for r in h])
        est = np.array([float(r.get("estep_seconds", np.nan)) for r in h])
        mst = np.array([float(r.get("mstep_seconds", np.nan)) for r in h])
        pps = np.array([float(r.get("particles_per_s", np.nan)) for r in h])
        add("iterations", len(h), "{:.0f}")
        add("all iterations (s)", np.nansum(sec))
        add("E-steps (s)", np.nansum(est))
        add("M-steps (s)", np.nansum(mst))
        add("mean time per iteration (s)", np.nanmean(sec))
        add("mean particles/s", np.nanmean(pps), "{:.0f}")
    if data.diagnostics_seconds:
        d = np.array(list(data.diagnostics_seconds.values()))
        add("diagnostics, all iterations (s)", d.sum())
        add("diagnostics, mean per iteration (s)", d.mean(), "{:.3f}")
        if h:
            its = {int(r.get("iteration", 0)): float(r.get("seconds", np.nan)) for r in h}
            frac = [data.diagnostics_seconds[i] / its[i] for i in data.diagnostics_seconds
                    if its.get(i, 0) > 0]
            if frac:
                add("diagnostics / iteration time (%)", 100 * float(np.mean(frac)), "{:.1f}")
    for key in ("preprocess_s", "total_s"):
        if key in data.attrs:
            add(key, data.attrs[key])
    if not rows:
        return '<p class="muted">no timings recorded</p>'
    return "<table>" + "".join(rows) + "</table>"


def _provenance(data: RunData) -> str:
    if not data.attrs:
        return '<p class="muted">no provenance recorded (interrupted run without run.h5)</p>'
    rows = "".join(f'<tr><td class="l">{html.escape(str(key))}</td>'
                   f'<td class="l">{html.escape(str(val))}</td></tr>'
                   for key, val in sorted(data.attrs.items()))
    return f"<table>{rows}</table>"


def _events_tail(run_dir: Path) -> str:
    p = run_dir / "events.log"
    if not p.is_file():
        return ""
    lines = p.read_text(errors="replace").splitlines()[-_EVENTS_TAIL_LINES:]
    return ("<h2>Event log</h2><p class=\"muted\">last "
            f"{len(lines)} lines of events.log</p><pre>"
            + html.escape("\n".join(lines)) + "</pre>")


def render_html(data: RunData, final_grid: Path | None = None,
                final_figs: dict[str, Path] | None = None) -> str:
    """Return the report page for ``data`` as one HTML string."""
    name = html.escape(data.run_dir.resolve().name)
    k = 0 if data.images is None else data.images.shape[0]
    last = data.history[-1] if data.history else {}
    if data.complete:
        status = "finished"
    else:
        it = last.get("iteration", max(data.figure_iterations, default=0))
        status = f"interrupted or still running: last completed iteration {int(it)}"
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>cryoclass report: {name}</title><style>{_CSS}</style>",
        f"<script>{_JS}</script></head><body>",
        f"<h1>cryoclass 2D classification: {name}</h1>",
        f"<p>Status: <b>{html.escape(status)}</b> · source: {html.escape(data.source)}"
        f" · {k} classes · {len(data.history)} iterations recorded"
        + (f" · cryoclass {html.escape(str(data.attrs['version']))}"
           if "version" in data.attrs else "")
        + (f" · created {html.escape(str(data.attrs['created']))}"
           if "created" in data.attrs else "") + "</p>",
    ]
    if not data.complete:
        parts.append('<p class="warn">This run has no run.h5: the classes below are those '
                     'of its last completed iteration, not final results.</p>')
    parts.append("<h2>Classes</h2>")
    if data.images is not None:
        if final_grid is not None and final_grid.is_file():
            parts.append(f'<p><img alt="class grid" style="max-width:100%" '
                         f'src="{_png_b64(final_grid)}"></p>')
        parts.append('<p class="muted">Click a column header to sort. Hover a header for what '
                     'it measures and which direction looks like a good class.</p>')
        parts.append(_class_table(data))
    else:
        parts.append('<p class="muted">no class images available</p>')
    if final_figs:
        parts.append('<h3>Final diagnostics</h3><div class="row">')
        for kind in ("ess", "pmax", "noise"):
            if kind in final_figs and final_figs[kind].is_file():
                parts.append(f'<img alt="{kind}" src="{_png_b64(final_figs[kind])}">')
        parts.append("</div>")
    parts.append("<h2>Iteration history</h2>")
    sched = data.run_dir / "figures" / "resolution_schedule.png"
    if data.history and plot_resolution_schedule(sched, data.history) is not None:
        parts.append(f'<p><img alt="resolution schedule" src="{_png_b64(sched)}"></p>')
    parts.append(_figure_viewer(data))
    if data.history:
        parts.append(_history_table(data))
    parts.append("<h2>Timings</h2>" + _timings(data))
    parts.append("<h2>Configuration</h2>")
    parts.append("<pre>" + html.escape(data.config_toml) + "</pre>" if data.config_toml
                 else '<p class="muted">config not recorded (no run.h5 or config.toml)</p>')
    parts.append("<h2>Provenance</h2>" + _provenance(data))
    parts.append(_events_tail(data.run_dir))
    parts.append(f'<p class="muted">report written {time.strftime("%Y-%m-%d %H:%M:%S")}'
                 "</p></body></html>\n")
    return "\n".join(parts)


def build_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    Rebuilds the final figures from run.h5 when it exists; for an interrupted run, draws
    the last completed iteration's classes (``figures/classes_latest.png``).

    Raises
    ------
    InputError
        When ``run_dir`` holds nothing to report.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    data = load_run(run_dir)
    grid = None
    final_figs: dict[str, Path] = {}
    if data.complete:
        final_figs = write_final_figures(run_dir)
        grid = final_figs.get("classes")
    elif data.images is not None:
        grid = run_dir / "figures" / "classes_latest.png"
        s = data.stats
        k = data.images.shape[0]
        plot_class_grid(grid, data.images, data.pixel_A,
                        s.get("count", np.zeros(k)), s.get("frc_res_A", np.full(k, np.nan)),
                        s.get("median_ess", np.full(k, np.nan)),
                        title=f"iteration {data.attrs.get('classes_from_iteration', '?')}")
    text = render_html(data, grid, final_figs)
    out = run_dir / "report.html"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    logger.info("report written to %s (%.1f s, %d KiB, from %s)", out,
                time.perf_counter() - t0, len(text) // 1024, data.source)
    return out


def main_report(run_dir) -> int:
    """Entry point of ``cryoclass report RUN``: build the report, return exit status 0.

    Input problems raise :class:`~cryoclass.errors.InputError` for the CLI to print.
    """
    path = build_report(Path(run_dir))
    logger.info("open %s in a browser", path)
    return 0
