import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cryoclass.bench import gemm_peak_gflops, run_bench
from cryoclass.parallel.comm import Comm

SRC = Path(__file__).resolve().parents[1] / "src"


def test_bench_reports_every_phase_and_a_flop_rate():
    r = run_bench(Comm(None), np, n=120, box_px=32, pixel_size_A=6.0, n_classes=4,
                  overrides=["classify.max_res_A=16", "search.psi_step_deg=15"])
    for key in ("read_particles_per_s", "preprocess_particles_per_s", "estep_particles_per_s",
                "t_coarse", "t_fine", "t_backproject", "t_class_frame", "mstep_s"):
        assert r[key] > 0, key
    # FLOP count of the coarse GEMM + local refinement, positive and consistent
    assert r["estep_gflop_total"] > 0
    assert 0 < r["search_fraction_of_peak"] < 1.5
    assert gemm_peak_gflops(n=256, repeat=1) > 0.1


def test_bench_cli_writes_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "cryoclass", "-q", "bench", "--n", "80", "--box",
                        "32", "--pixel-size", "6", "--classes", "3", "--max-res", "16",
                        "--psi-step", "20", "--json", str(out)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "GFLOP/s" in r.stdout
    data = json.loads(out.read_text())
    assert data["n_particles"] == 80 and data["n_classes"] == 3
