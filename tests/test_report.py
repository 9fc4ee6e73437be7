"""Diagnostics: figure content (histogram bars, class grid order and labels, noise curves),
class metrics on synthetic images, and the HTML report from a fake run directory."""

from __future__ import annotations

import re
import time
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from cryoclass.errors import InputError
from cryoclass.outputs import write_history
from cryoclass.report import (
    build_report,
    class_metrics,
    iteration_diagnostics,
    main_report,
    write_final_figures,
    write_iteration_figures,
)
from cryoclass.report.figures import grid_shape, nice_length, plot_class_grid
from cryoclass.report.metrics import frc_area

BINS = 200


def make_record(it: int, k: int, n_shells: int, rng, n_particles: int = 1000,
                counts=None) -> dict:
    """An iteration record shaped like the one em.classify() produces."""
    ess = rng.multinomial(n_particles, rng.dirichlet(np.ones(BINS))).astype(np.float64)
    pmax = rng.multinomial(n_particles, rng.dirichlet(np.ones(BINS))).astype(np.float64)
    if counts is None:
        counts = rng.multinomial(n_particles, np.ones(k) / k).astype(np.float64)
    shell_res = np.where(np.arange(n_shells) > 0,
                         64 * 2.0 / np.maximum(np.arange(n_shells), 1), np.inf)
    return {
        "iteration": it, "kind": "online" if it < 3 else "full", "sub": it, "n_sub": 2,
        "n_particles": n_particles, "seconds": 2.0 + it, "estep_seconds": 1.5,
        "mstep_seconds": 0.2, "particles_per_s": n_particles / (2.0 + it),
        "ess_quartiles": [1.1, 1.4, 2.0], "pmax_quartiles": [0.4, 0.6, 0.9],
        "ess_hist": ess, "pmax_hist": pmax, "class_counts": np.asarray(counts, float),
        "class_median_ess": rng.uniform(1, 3, k), "mstep_weights": np.ones(k),
        "empty_classes": 0, "changed_class_frac": 0.25, "mean_psi_change_deg": 12.0,
        "mean_loglik": -1.0, "sigma2_used": np.linspace(4.0, 1.0, n_shells),
        "sigma2_est": np.linspace(3.0, 0.5, n_shells) * rng.uniform(0.9, 1.1, n_shells),
        "sigma2_init": np.linspace(5.0, 2.0, n_shells),
        "frc_res_A": rng.uniform(6.0, 30.0, k), "shell_res_A": shell_res,
    }


def geom_like(m: int, pixel_A: float = 2.0):
    return types.SimpleNamespace(work_pixel_A=pixel_A, work_box=m, pixel_size_A=pixel_A,
                                 particle_radius_px=0.35 * m, mask_inner_px=0.4 * m,
                                 mask_outer_px=0.45 * m)


def disk(m: int, radius_px: float, cy: float = 0.0, cx: float = 0.0) -> np.ndarray:
    c = np.arange(m) - m // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    return ((y - cy) ** 2 + (x - cx) ** 2 <= radius_px**2).astype(np.float64)


# ------------------------------------------------------------------------- figures
def test_histograms_show_the_stored_bins(tmp_path):
    rng = np.random.default_rng(0)
    k, m = 6, 32
    rec = make_record(1, k, 17, rng, n_particles=1234)
    plotted = {}
    paths = write_iteration_figures(tmp_path, rng.normal(size=(k, m, m)), geom_like(m), rec,
                                    plotted=plotted)
    assert {p.name for p in paths.values()} == {
        "classes_iter_001.png", "ess_iter_001.png", "pmax_iter_001.png",
        "noise_iter_001.png"}
    for kind, lo, hi in (("ess", 1.0, k), ("pmax", 0.0, 1.0)):
        h = plotted[kind]
        np.testing.assert_array_equal(h.counts, rec[f"{kind}_hist"])
        assert h.counts.sum() == rec["n_particles"] == 1234
        np.testing.assert_allclose(h.edges, np.linspace(lo, hi, BINS + 1))
        assert h.quartiles == rec[f"{kind}_quartiles"]
        with Image.open(paths[kind]) as im:
            assert im.size[0] > 200 and im.size[1] > 100


def test_class_grid_sorted_by_count_with_labels(tmp_path):
    k, m = 7, 32
    counts = np.array([5, 40, 0, 17, 3, 9, 17], dtype=float)
    # class c has a bright pixel at column c: identifies the tile it landed in
    classes = np.zeros((k, m, m))
    for c in range(k):
        classes[c, 3, 3 + c] = 1.0
    res = np.array([10.0, 7.5, np.inf, 12.25, 20.0, 30.0, 8.0])
    ess = np.array([1.0, 1.25, np.nan, 2.5, 3.0, 1.5, 1.75])
    g = plot_class_grid(tmp_path / "g.png", classes, 2.0, counts, res, ess)
    np.testing.assert_array_equal(g.order, [1, 3, 6, 5, 0, 4, 2])  # stable on ties
    assert g.count_labels == ["40", "17", "17", "9", "5", "3", "0"]
    # the class with count 17 that comes first (class 3) shows its own stats
    assert g.res_labels[1] == "12.2 Å" and g.ess_labels[1] == "2.5"
    assert g.res_labels[-1] == "-" and g.ess_labels[-1] == "-"  # inf / NaN
    for j, c in enumerate(g.order):
        assert np.unravel_index(np.argmax(g.tiles[j]), (m, m)) == (3, 3 + c)
    n_rows, n_cols = grid_shape(k)
    assert (g.n_rows, g.n_cols) == (n_rows, n_cols)
    assert g.scale_bar_rows == list(range(0, n_rows, 2))
    # a round length of about a third of the 64 Å box, drawn to scale (within a pixel)
    assert g.scale_bar_A == 20.0 == nice_length(64 / 3)
    for length in g.scale_bar_len_px:
        assert abs(length - g.scale_bar_A / 2.0) <= 1.0
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "RGB" and im.size[0] > n_cols * 100


def test_noise_curves_are_sqrt_of_the_three_arrays(tmp_path):
    rng = np.random.default_rng(1)
    rec = make_record(2, 4, 21, rng)
    plotted = {}
    write_iteration_figures(tmp_path, rng.normal(size=(4, 16, 16)), geom_like(16), rec,
                            plotted=plotted)
    nd = plotted["noise"]
    np.testing.assert_array_equal(nd.sigma["sigma used"], np.sqrt(rec["sigma2_used"]))
    np.testing.assert_array_equal(nd.sigma["sigma estimate"], np.sqrt(rec["sigma2_est"]))
    np.testing.assert_array_equal(nd.sigma["sigma initial"], np.sqrt(rec["sigma2_init"]))
    assert nd.freq_invA[0] == 0.0
    np.testing.assert_allclose(nd.freq_invA[1:], 1.0 / rec["shell_res_A"][1:])


def test_figures_are_fast_for_50_classes(tmp_path):
    rng = np.random.default_rng(2)
    k, m = 50, 64
    classes = rng.normal(size=(k, m, m))
    rec = make_record(1, k, 33, rng, n_particles=5000)
    write_iteration_figures(tmp_path, classes, geom_like(m), rec)  # imports, fonts
    t0 = time.perf_counter()
    rec["iteration"] = 2
    write_iteration_figures(tmp_path, classes, geom_like(m), rec)
    dt = time.perf_counter() - t0
    assert dt < 1.5, f"figures took {dt:.2f} s"  # ~0.3 s measured; slack for loaded CI


def test_iteration_diagnostics_saves_the_data_and_never_raises(tmp_path, caplog):
    rng = np.random.default_rng(3)
    k, m = 5, 24
    state = types.SimpleNamespace(classes=rng.normal(size=(k, m, m)))
    rec = make_record(4, k, 13, rng)
    paths = iteration_diagnostics(tmp_path, state, geom_like(m), rec)
    assert all(p.is_file() for p in paths.values())
    with np.load(tmp_path / "figures" / "iter_004.npz") as z:
        np.testing.assert_array_equal(z["ess_hist"], rec["ess_hist"])
        assert str(z["kind"]) == "full" and float(z["diagnostics_seconds"]) > 0
    with np.load(tmp_path / "figures" / "classes_latest.npz") as z:
        np.testing.assert_allclose(z["images"], state.classes.astype(np.float32))
        assert int(z["iteration"]) == 4
    bad = dict(rec, iteration=5)
    del bad["sigma2_est"]
    assert iteration_diagnostics(tmp_path, state, geom_like(m), bad) == {}
    assert "diagnostics failed" in caplog.text
    assert iteration_diagnostics(tmp_path, state, geom_like(m), dict(rec, iteration=6),
                                 plots=False) == {}
    assert (tmp_path / "figures" / "iter_006.npz").is_file()
    assert not (tmp_path / "figures" / "classes_iter_006.png").exists()


def test_background_writer_draws_a_snapshot_of_each_iteration(tmp_path):
    from cryoclass.report.figures import DiagnosticsWriter

    rng = np.random.default_rng(7)
    k, m = 4, 24
    state = types.SimpleNamespace(classes=rng.normal(size=(k, m, m)))
    first = state.classes.copy()
    recs = [make_record(i, k, 13, rng) for i in (1, 2, 3)]
    with DiagnosticsWriter(tmp_path) as diag:
        diag(state, geom_like(m), recs[0])
        state.classes[:] = 0.0  # the engine may reuse buffers: the writer copied them
        recs[0]["ess_hist"][:] = 0.0
        for rec in recs[1:]:
            diag(state, geom_like(m), rec, is_last=rec is recs[-1])
    assert sorted(diag.seconds) == [1, 2, 3]
    for it in (1, 2, 3):
        assert (tmp_path / "figures" / f"classes_iter_{it:03d}.png").is_file()
    with np.load(tmp_path / "figures" / "iter_001.npz") as z:
        assert z["ess_hist"].sum() == recs[0]["n_particles"]
    with np.load(tmp_path / "figures" / "classes_latest.npz") as z:
        assert int(z["iteration"]) == 3 and not z["images"].any()
    assert first.any()


# ------------------------------------------------------------------------- metrics
def test_metrics_on_synthetic_images():
    m, pixel_A = 64, 1.5
    rng = np.random.default_rng(4)
    imgs = np.stack([disk(m, 10), disk(m, 8, cy=6.0, cx=-8.0), rng.normal(size=(m, m))])
    met = class_metrics(imgs, pixel_A, mask_radius_px=20.0)
    assert met["outside_power_frac"][0] < 1e-12
    assert met["center_offset_A"][0] < 1e-9
    assert abs(met["center_offset_A"][1] - 10.0 * pixel_A) < 1e-9  # hypot(6, 8) px
    assert met["outside_power_frac"][1] < 1e-12  # still inside the radius
    # the radius of gyration of a uniform disk is R / sqrt(2)
    assert abs(met["radius_of_gyration_A"][0] / pixel_A - 10 / np.sqrt(2)) < 0.3
    # noise: outside power about the area fraction outside the radius
    area_out = 1 - (np.pi * 20.0**2) / m**2
    assert abs(met["outside_power_frac"][2] - area_out) < 0.05
    assert 0.8 < met["contrast"][2] < 1.25
    assert np.isinf(met["contrast"][0])  # flat outside
    assert np.isnan(met["frc_area"]).all()
    # a disk pushed to the edge puts its power outside
    edge = class_metrics(disk(m, 6, cy=25.0)[None], pixel_A, 20.0)
    assert edge["outside_power_frac"][0] > 0.6
    assert abs(edge["center_offset_A"][0] - 25.0 * pixel_A) < 1e-9


def test_metrics_frc_and_passthrough():
    k, m, n_shells = 3, 16, 9
    res = np.where(np.arange(n_shells) > 0, 32.0 / np.maximum(np.arange(n_shells), 1),
                   np.inf)
    frc = np.ones((k, n_shells))
    frc[1, 4:] = 0.0
    frc[2, 1:] = 0.0
    met = class_metrics(np.zeros((k, m, m)) + disk(m, 3), 2.0, 5.0, frc=frc,
                        shell_res_A=res, counts=[3, 2, 1], median_ess=[1, 2, 3])
    np.testing.assert_allclose(met["frc_area"], [1.0, 3 / 8, 0.0])
    np.testing.assert_allclose(frc_area(frc), met["frc_area"])
    assert met["frc_res_A"][0] == res[-1] and np.isinf(met["frc_res_A"][2])
    assert res[4] < met["frc_res_A"][1] < res[3]
    np.testing.assert_array_equal(met["count"], [3, 2, 1])
    assert "mean_posterior" not in met
    with pytest.raises(ValueError):
        class_metrics(np.zeros((2, m, m)), 1.0, 5.0, counts=[1, 2, 3])


# -------------------------------------------------------------------------- report
CONFIG = '[classify]\nn_classes = 6\nseed = 7\n\n[mask]\ninner_diameter_A = 40.0\n'


def write_fake_run(run_dir: Path, k: int = 6, m: int = 32, n_iter: int = 3) -> dict:
    """A run.h5 with the layout of cryoclass.outputs.write_run_h5."""
    rng = np.random.default_rng(5)
    run_dir.mkdir(parents=True, exist_ok=True)
    counts = np.array(sorted(rng.integers(1, 300, k), reverse=True), dtype=np.int64)
    history = [make_record(i + 1, k, 17, rng, n_particles=int(counts.sum()))
               for i in range(n_iter)]
    images = np.stack([disk(m, 6 + j % 3, cy=j - 2.0) for j in range(k)])
    images += 0.05 * rng.normal(size=images.shape)
    n = int(counts.sum())
    with h5py.File(run_dir / "run.h5", "w") as f:
        f.attrs["config_toml"] = CONFIG
        f.attrs["version"] = "0.1.0"
        f.attrs["argv"] = "cryoclass classify p.star --classes 6 --out run"
        f.attrs["created"] = "2026-01-01T00:00:00+00:00"
        f.attrs["n_ranks"] = 2
        f.attrs["pixel_size_A"] = 2.0
        f.attrs["box_px"] = m
        f.attrs["work_box_px"] = m
        f.attrs["work_pixel_size_A"] = 2.0
        gp = f.create_group("particles")
        gp["class"] = np.repeat(np.arange(1, k + 1), counts).astype(np.int32)
        gp["ess"] = np.ones(n, np.float32)
        gc = f.create_group("classes")
        gc["images"] = images.astype(np.float32)
        gc["count"] = counts
        gc["frc_res_A"] = rng.uniform(6, 30, k)
        gc["median_ess"] = rng.uniform(1, 3, k)
        gc["mean_posterior"] = rng.uniform(0.3, 1, k)
        gc["frc"] = np.clip(1 - np.linspace(0, 1.5, 17)[None] * rng.uniform(0.5, 2, (k, 1)),
                            0, 1)
        gc["shell_res_A"] = history[0]["shell_res_A"]
        gc["order"] = np.arange(k)
        write_history(f.create_group("iterations"), history)
    return {"counts": counts, "history": history}


def _class_rows(text: str) -> list[str]:
    table = re.search(r'<table class="sortable" id="class-table">(.*?)</table>', text, re.S)
    assert table is not None
    body = re.search(r"<tbody>(.*?)</tbody>", table.group(1), re.S).group(1)
    return re.findall(r"<tr>.*?</tr>", body, re.S)


def test_report_from_run_h5(tmp_path):
    run = tmp_path / "run"
    fake = write_fake_run(run)
    out = build_report(run)
    assert out == run / "report.html"
    text = out.read_text()
    rows = _class_rows(text)
    assert len(rows) == 6
    # the count column shows the stored counts, in stored order
    shown = [int(re.findall(r'<td data-v="([^"]+)">', r)[1].split(".")[0]) for r in rows]
    assert shown == list(fake["counts"])
    assert "n_classes = 6" in text and "inner_diameter_A = 40.0" in text
    assert "outside power" in text and "onclick=\"sortTable(this)\"" in text
    assert not re.search(r"https?://", text), "report must not reference the network"
    assert "data:image/png;base64," in text
    # iteration history: one row per iteration with its quartiles
    hist = re.search(r'id="history-table">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    assert len(re.findall(r"<tr>", hist)) == 3
    assert 'data-v="1.4"' in hist and "online-EM 1/2" in hist
    assert (run / "figures" / "classes_final.png").is_file()
    assert (run / "figures" / "noise_final.png").is_file()
    assert main_report(run) == 0


def test_final_figures_follow_run_h5(tmp_path):
    run = tmp_path / "run"
    fake = write_fake_run(run)
    plotted = {}
    paths = write_final_figures(run, plotted=plotted)
    assert set(paths) == {"classes", "ess", "pmax", "noise"}
    assert plotted["classes"].count_labels == [str(c) for c in fake["counts"]]
    last = fake["history"][-1]
    np.testing.assert_array_equal(plotted["ess"].counts, last["ess_hist"])
    np.testing.assert_array_equal(plotted["noise"].sigma["sigma used"],
                                  np.sqrt(last["sigma2_used"]))


def test_report_for_an_interrupted_run(tmp_path):
    rng = np.random.default_rng(6)
    k, m = 4, 24
    run = tmp_path / "run"
    state = types.SimpleNamespace(classes=rng.normal(size=(k, m, m)))
    for it in (1, 2):
        rec = make_record(it, k, 13, rng, counts=[3, 50, 7, 0])
        iteration_diagnostics(run, state, geom_like(m), rec)
    (run / "events.log").write_text("iter 1 ...\niter 2 ...\n")
    text = build_report(run).read_text()
    rows = _class_rows(text)
    assert len(rows) == k
    shown = [re.findall(r'<td data-v="([^"]+)">', r)[1] for r in rows]
    assert [int(float(v)) for v in shown] == [50, 7, 3, 0]  # largest first
    assert "interrupted" in text and "last completed iteration 2" in text
    assert 'src="figures/classes_iter_002.png"' in text
    assert "iter 2 ..." in text
    assert not re.search(r"https?://", text)


def test_report_from_a_checkpoint(tmp_path):
    from cryoclass.config import load_config
    from cryoclass.io.checkpoint import save_checkpoint

    rng = np.random.default_rng(8)
    k, m, n_shells = 5, 32, 17
    history = [make_record(i, k, n_shells, rng, counts=[10, 0, 30, 20, 5]) for i in (1, 2)]
    state = types.SimpleNamespace(
        iteration=2, classes=np.stack([disk(m, 4 + j) for j in range(k)]),
        sigma2_init=np.ones(n_shells), sigma2_est=np.ones(n_shells), num=None, den=None,
        frc=np.clip(1 - np.linspace(0, 2, n_shells), 0, 1)[None].repeat(k, 0),
        history=history, align_res_A=20.0, pose_marginal=0)
    save_checkpoint(tmp_path / "checkpoint.h5", state, load_config(None), "in.star")
    text = build_report(tmp_path).read_text()
    rows = _class_rows(text)
    shown = [int(float(re.findall(r'<td data-v="([^"]+)">', r)[1])) for r in rows]
    assert shown == [30, 20, 10, 5, 0]
    assert "checkpoint.h5" in text and "[classify]" in text
    assert "last completed iteration 2" in text
    hist = re.search(r'id="history-table">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    assert len(re.findall(r"<tr>", hist)) == 2


def test_report_from_figures_alone(tmp_path):
    (tmp_path / "figures").mkdir()
    for kind in ("classes", "ess", "pmax", "noise"):
        Image.new("RGB", (4, 4)).save(tmp_path / "figures" / f"{kind}_iter_007.png")
    text = build_report(tmp_path).read_text()
    assert "figures only" in text and 'src="figures/noise_iter_007.png"' in text


def test_metrics_for_geometry_uses_the_particle_radius():
    from cryoclass.report.metrics import metrics_for_geometry

    m = 40
    g = geom_like(m, pixel_A=3.0)  # particle radius 14 px
    ring = disk(m, 16) - disk(m, 13)  # density between 13 and 16 px
    met = metrics_for_geometry(ring[None], g, counts=[12])
    ref = class_metrics(ring[None], 3.0, 14.0, counts=[12])
    for key, val in ref.items():
        np.testing.assert_array_equal(met[key], val)
    assert 0.2 < met["outside_power_frac"][0] < 0.9


def test_report_without_anything_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="nothing to report"):
        build_report(tmp_path)
    with pytest.raises(InputError, match="no such run directory"):
        build_report(tmp_path / "missing")


def test_importing_cryoclass_does_not_import_matplotlib():
    import subprocess
    import sys

    code = ("import sys, cryoclass, cryoclass.report; "
            "print('matplotlib' in sys.modules, 'h5py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert out.stdout.split()[0] == "False"


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no headless chromium (make installs it)")
def test_report_opens_in_headless_chromium_and_sorts(tmp_path):
    import subprocess

    run = tmp_path / "run"
    fake = write_fake_run(run)
    text = build_report(run).read_text()
    probe = text.replace("</body>", (
        "<script>var th=document.querySelectorAll('#class-table th')[2];sortTable(th);"
        "var r=[].map.call(document.querySelector('#class-table tbody').rows,"
        "function(x){return x.cells[2].getAttribute('data-v')});"
        "document.body.setAttribute('data-sorted',r.join(','));</script></body>"))
    page = run / "probe.html"
    page.write_text(probe)
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                          "--enable-logging=stderr", "--v=0", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "Uncaught" not in out.stderr, out.stderr
    sorted_counts = re.search(r'data-sorted="([^"]*)"', out.stdout).group(1)
    assert [int(float(v)) for v in sorted_counts.split(",")] == sorted(fake["counts"])
