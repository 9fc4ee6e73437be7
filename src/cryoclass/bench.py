"""``cryoclass bench``: measured throughput per phase against the machine's GEMM peak.

Example::

    cryoclass bench --n 4000 --box 64 --classes 50 --max-res 6
    mpiexec -n 2 cryoclass bench --n 4000 --classes 50 --json bench.json

A synthetic particle set (the simulator's phantoms, CTF and noise) is generated in memory
on every rank (same seed), written once to a scratch MRC stack to time reading, then
classified with one online-EM iteration over all particles (warm-up) and one full
iteration (measured). Reported: particles/s of preprocessing, reading, E-step, M-step and
the reduction; the E-step's floating-point operations and GFLOP/s; and the measured
single-precision GEMM rate of the same BLAS with the same threads, so the ratio to the
machine's limit is visible. Then one full E-step over all particles per resolution level
(``levels``, default: the automatic first level, two between, and the maximum alignment
resolution) against the classes just formed: per level its resolution, E-step box,
rotations, shifts and coefficients, seconds, particles/s and GFLOP/s.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cryoclass.config import Config, load_config

logger = logging.getLogger(__name__)


def gemm_peak_gflops(n: int = 2048, repeat: int = 3, dtype=np.float32, xp=np) -> float:
    """Best measured GFLOP/s of an ``n x n x n`` matrix product."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
    b = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
    best = np.inf
    for _ in range(repeat + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        c = a @ b
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
        best = min(best, time.perf_counter() - t0)
    del c
    return 2.0 * n**3 / best / 1e9


def bench_config(n: int, n_classes: int, base: Config | None = None,
                 overrides: list[str] | tuple = ()) -> Config:
    """Two iterations over all particles: a warm-up online iteration and a full one.

    The search is the configured one (``--mode``, ``--no-force-max``): the bench's own
    simulated particles do not choose it (``classify.marginalize_poses`` "auto" becomes
    "never"; "always" is kept).
    """
    per_class = max(1, -(-n // n_classes))
    cfg = load_config(None, [f"classify.n_classes={n_classes}", "classify.online_em_iters=1",
                             f"classify.batch_size_per_class={per_class}",
                             "classify.final_full_iters=1", "output.plots=false",
                             *overrides])
    if base is not None:
        cfg = replace(base, classify=replace(base.classify, **{
            k: getattr(cfg.classify, k) for k in ("n_classes", "online_em_iters",
                                                  "batch_size_per_class", "final_full_iters")}))
    if cfg.classify.marginalize_poses == "auto":
        cfg = replace(cfg, classify=replace(cfg.classify, marginalize_poses="never"))
    return cfg


def default_levels(geom, cfg) -> list[float]:
    """First automatic level, two geometric steps between, and the finest (Å)."""
    from cryoclass.em.schedule import initial_resolution

    lo = max(initial_resolution(geom, cfg), geom.particle_diameter_A / 3.0)
    hi = geom.max_align_res_A
    return sorted({round(float(r), 2) for r in np.geomspace(lo, hi, 4)}, reverse=True)


def bench_levels(table, result, cfg, comm, xp, levels: list[float] | None,
                 peak_gflops: float) -> list[dict]:
    """One full E-step (with the class-frame rotation and the reduction) per level."""
    from cryoclass.em.driver import Layout, dtypes, load_shard, run_iteration
    from cryoclass.em.levels import make_level
    from cryoclass.em.schedule import sigma2_used

    geom = result.geom
    shard = load_shard(table, geom, comm, cfg.classify.seed, xp, real_dtype=dtypes(cfg)[0])
    k = cfg.classify.n_classes
    state = result.state
    s2 = sigma2_used(state, 0, "full", cfg, geom)
    def slowest(v: float) -> float:  # the slowest rank sets the time
        return max(comm.allgather(float(v)))

    rows = []
    for res in levels if levels else default_levels(geom, cfg):
        level = make_level(geom, res)
        layout = Layout(k, geom.n_coeffs, geom.n_shells)
        t0 = time.perf_counter()
        out = run_iteration(state, shard, geom, level, cfg, "full", 0, s2, xp,
                            np.full(shard.n_local, -1), np.zeros(shard.n_local), layout)
        buf = comm.allreduce_sum_to_host(out.packed)
        dt = slowest(time.perf_counter() - t0)
        search_s = slowest(out.phase_seconds["t_coarse"] + out.phase_seconds["t_fine"])
        gflop = float(layout.view(buf, "flops")[0]) / 1e9
        rows.append({**level.describe(), "seconds": dt, "particles_per_s": shard.n_total / dt,
                     "gflop": gflop,
                     "search_gflops_per_rank": gflop / comm.size / max(search_s, 1e-9),
                     "search_fraction_of_peak": gflop / comm.size / max(search_s, 1e-9)
                     / peak_gflops,
                     **{key: slowest(float(v)) for key, v in out.phase_seconds.items()}})
    shard.store.close()
    return rows


def run_bench(comm, xp, n: int = 2000, box_px: int = 64, pixel_size_A: float = 3.0,
              n_classes: int = 50, overrides: list[str] | tuple = (), seed: int = 0,
              levels: list[float] | None = None) -> dict:
    """Measure every phase; returns a dict of numbers (identical keys on every rank)."""
    from cryoclass.em import PHASES, classify
    from cryoclass.io.memory import table_from_simulation
    from cryoclass.io.mrc import ImageSource, write_stack
    from cryoclass.simulate import SimulationParams, simulate_images

    params = SimulationParams(n_particles=n, box_px=box_px, pixel_size_A=pixel_size_A,
                              seed=seed)
    images, _, truth = simulate_images(params)
    table = table_from_simulation(images, truth, pixel_size_A, params.voltage_kv,
                                  params.cs_mm, params.amplitude_contrast)
    out: dict = {"n_particles": n, "box_px": box_px, "pixel_size_A": pixel_size_A,
                 "n_classes": n_classes, "n_ranks": comm.size, "backend": xp.__name__}
    # reading: one scratch stack per rank, read back in blocks of 512
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mrcs"
        write_stack(path, images, pixel_size_A)
        src = ImageSource(np.array([str(path)] * n), np.arange(n))
        t0 = time.perf_counter()
        for s in range(0, n, 512):
            src.read(np.arange(s, min(n, s + 512)))
        out["read_particles_per_s"] = n / (time.perf_counter() - t0)
        src.close()
    cfg = bench_config(n, n_classes, overrides=overrides)
    t0 = time.perf_counter()
    result = classify(table, cfg, comm, xp)
    out["total_s"] = time.perf_counter() - t0
    rec = result.state.history[-1]
    g = result.geom
    n_local = n / comm.size
    out.update({
        "work_box_px": g.work_box, "n_psi": int(g.psi_rad.size),
        "n_shifts": int(g.shifts_px.shape[0]), "n_coeffs_align": int(g.align.size),
        "search_mode": g.search_mode, "force_max": cfg.classify.force_max,
        "preprocess_particles_per_s": n_local / max(result.timings["preprocess_s"], 1e-9),
        "iteration_s": rec["seconds"], "estep_s": rec["estep_seconds"],
        "mstep_s": rec["mstep_seconds"], "reduce_s": rec["reduce_seconds"],
        "estep_particles_per_s": n / rec["estep_seconds"],
        "iteration_particles_per_s": n / rec["seconds"],
        "estep_gflop_total": rec["estep_gflop"],
    })
    for key in PHASES:
        out[key] = rec[key]
    search_s = rec["t_coarse"] + rec["t_fine"]
    out["search_gflops_per_rank"] = rec["estep_gflop"] / comm.size / max(search_s, 1e-9)
    out["gemm_peak_gflops_per_rank"] = gemm_peak_gflops(xp=xp)
    out["search_fraction_of_peak"] = (out["search_gflops_per_rank"]
                                      / out["gemm_peak_gflops_per_rank"])
    out["final_align_res_A"] = rec.get("align_res_A", g.max_align_res_A)
    out["levels"] = bench_levels(table, result, cfg, comm, xp, levels,
                                 out["gemm_peak_gflops_per_rank"])
    return out


def format_table(r: dict) -> str:
    """Human-readable summary of :func:`run_bench`."""
    lines = [
        f"cryoclass bench: {r['n_particles']} particles, box {r['box_px']} px "
        f"(working {r['work_box_px']} px), K={r['n_classes']}, {r['n_ranks']} rank(s), "
        f"{r['backend']}, search {r['search_mode']}, force max "
        f"{'on' if r['force_max'] else 'off'}",
        f"  finest grid: {r['n_psi']} rotations, {r['n_shifts']} shifts, "
        f"{r['n_coeffs_align']} alignment coefficients",
        f"  read stacks        {r['read_particles_per_s']:10.0f} particles/s (one rank)",
        f"  preprocess         {r['preprocess_particles_per_s']:10.0f} particles/s per rank",
        f"  E-step             {r['estep_particles_per_s']:10.0f} particles/s (all ranks)",
        f"  whole iteration    {r['iteration_particles_per_s']:10.0f} particles/s",
        f"  M-step {r['mstep_s']:.3f} s, reduction {r['reduce_s']:.4f} s per iteration",
        "  E-step phases (s): " + ", ".join(
            f"{k[2:]} {r[k]:.3f}" for k in ("t_references", "t_coarse", "t_fine",
                                            "t_backproject", "t_class_frame")),
        f"  pose search: {r['estep_gflop_total']:.2f} GFLOP, "
        f"{r['search_gflops_per_rank']:.1f} GFLOP/s per rank = "
        f"{100 * r['search_fraction_of_peak']:.0f}% of the measured sgemm peak "
        f"({r['gemm_peak_gflops_per_rank']:.1f} GFLOP/s per rank)",
        "  per resolution level (one full E-step over all particles, all ranks):",
        "    res (Å)  box  rotations  shifts  coeffs   time (s)  particles/s  GFLOP/s/rank"
        "  % peak",
    ]
    for lv in r.get("levels", []):
        lines.append(f"    {lv['align_res_A']:7.1f} {lv['level_box_px']:4d} "
                     f"{lv['level_rotations']:10d} {lv['level_shifts']:7d} "
                     f"{lv['level_coeffs']:7d} {lv['seconds']:10.2f} "
                     f"{lv['particles_per_s']:12.0f} {lv['search_gflops_per_rank']:13.1f} "
                     f"{100 * lv['search_fraction_of_peak']:7.0f}")
    return "\n".join(lines)


def write_json(path: Path, r: dict) -> None:
    """Save the numbers (rank 0)."""
    Path(path).write_text(json.dumps(r, indent=2, default=float))
