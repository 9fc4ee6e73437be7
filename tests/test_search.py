"""Coarse-to-fine search against the exhaustive search on the same references."""

import numpy as np

from cryoclass.config import load_config
from cryoclass.em import (
    Layout,
    ModelState,
    classify,
    load_shard,
    make_level,
    run_iteration,
    sigma2_used,
)
from cryoclass.parallel.comm import Comm

from engine_fixtures import make_problem

OPTS = ["classify.n_classes=3", "classify.max_res_A=12", "classify.online_em_iters=6",
        "classify.batch_size_per_class=60", "classify.anneal_start_iter=1",
        "classify.anneal_iters=2", "search.psi_step_deg=6", "mask.inner_diameter_A=160",
        "search.shift_range_A=51.2"]  # 20% of the box, as these mechanism tests were set


def test_coarse_to_fine_finds_the_exhaustive_best_pose():
    table, truth = make_problem(n_per=100, snr=0.3, seed=5)
    cfg = load_config(None, OPTS)
    res = classify(table, cfg, Comm(None))  # converged classes to search against
    outs = {}
    for mode in ("exhaustive", "coarse_to_fine"):
        c = load_config(None, OPTS + [f"search.mode={mode}"])
        from cryoclass.geometry import make_geometry

        geom = make_geometry(table.box_px, 4.0, c)
        shard = load_shard(table, geom, Comm(None), c.classify.seed, np)
        st = ModelState(0, res.state.classes.copy(), res.state.sigma2_init,
                        res.state.sigma2_est)
        s2 = sigma2_used(st, 0, "full", c, geom)
        n = shard.n_local
        level = make_level(geom, geom.max_align_res_A)
        outs[mode] = run_iteration(st, shard, geom, level, c, "full", 0, s2, np,
                                   np.full(n, -1), np.zeros(n),
                                   Layout(3, geom.n_coeffs, geom.n_shells))
    ex, cf = outs["exhaustive"], outs["coarse_to_fine"]
    same = ((ex.cls == cf.cls) & (ex.psi_idx == cf.psi_idx)
            & np.all(np.abs(ex.shift_px - cf.shift_px) < 1e-6, axis=1))
    assert same.mean() >= 0.99, f"only {same.mean():.1%} identical best poses"
