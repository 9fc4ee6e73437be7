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
machine's limit is visible.
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
    """Two iterations over all particles: a warm-up online iteration and a full one."""
    per_class = max(1, -(-n // n_classes))
    cfg = load_config(None, [f"classify.n_classes={n_classes}", "classify.online_em_iters=1",
                             f"classify.batch_size_per_class={per_class}",
                             "classify.final_full_iters=1", "output.plots=false",
                             *overrides])
    if base is not None:
        cfg = replace(base, classify=replace(base.classify, **{
            k: getattr(cfg.classify, k) for k in ("n_classes", "online_em_iters",
                                                  "batch_size_per_class", "final_full_iters")}))
    return cfg


def run_bench(comm, xp, n: int = 2000, box_px: int = 64, pixel_size_A: float = 3.0,
              n_classes: int = 50, overrides: list[str] | tuple = (), seed: int = 0) -> dict:
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
    return out


def format_table(r: dict) -> str:
    """Human-readable summary of :func:`run_bench`."""
    lines = [
        f"cryoclass bench: {r['n_particles']} particles, box {r['box_px']} px "
        f"(working {r['work_box_px']} px), K={r['n_classes']}, {r['n_ranks']} rank(s), "
        f"{r['backend']}, search {r['search_mode']}, force max "
        f"{'on' if r['force_max'] else 'off'}",
        f"  grid: {r['n_psi']} rotations, {r['n_shifts']} shifts, "
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
    ]
    return "\n".join(lines)


def write_json(path: Path, r: dict) -> None:
    """Save the numbers (rank 0)."""
    Path(path).write_text(json.dumps(r, indent=2, default=float))
