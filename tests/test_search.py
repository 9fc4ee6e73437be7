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

OPTS = ["classify.marginalize_poses=never", "classify.n_classes=3", "classify.max_res_A=12", "classify.online_em_iters=6",
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


def test_significant_keeps_the_largest_weights_that_hold_the_mass():
    from cryoclass.numerics.search import significant

    w = np.array([[0.05, 0.5, 0.0005, 0.3, 0.1495], [0.25, 0.25, 0.25, 0.25, 0.0]])
    assert significant(w, 0.999).tolist() == [[True, True, False, True, True],
                                              [True, True, True, True, False]]
    assert significant(w, 0.8).tolist() == [[False, True, False, True, False],
                                            [True, True, True, True, False]]  # ties kept
    assert significant(w, 1.0, floor=0.01).tolist() == [[True, True, False, True, True],
                                                        [True, True, True, True, False]]


def test_marginal_backprojection_matches_a_loop_over_local_poses(monkeypatch):
    """Force max off, coarse-to-fine: the folded, sorted, pruned backprojection is the sum
    over every local pose of ``w CTF Y conj(S_t)`` into bin (half, class, psi)."""
    from cryoclass.em.driver import chunk_ctf
    from cryoclass.geometry import make_geometry
    from cryoclass.numerics import search as search_mod
    from cryoclass.numerics.estep import lattice_phases

    table, _ = make_problem(n_per=8, snr=0.3, seed=2)
    cfg = load_config(None, OPTS + ["classify.force_max=false"])
    geom = make_geometry(table.box_px, 4.0, cfg)
    shard = load_shard(table, geom, Comm(None), 0, np)
    rng = np.random.default_rng(3)
    classes = rng.standard_normal((3, geom.work_box, geom.work_box)) * 0.05
    level = make_level(geom, 20.0)
    rows = np.arange(shard.n_local)
    y, ctf = shard.store.take(rows), chunk_ctf(shard, rows, geom, cfg, np)
    s2 = np.full(geom.n_shells, 2.0)
    ps = search_mod.PoseSearch(classes.astype(np.float32), s2, geom, level, False)
    poses = ps.search(y, ctf)
    half = shard.half
    wloc, cand_t, cand_psi = poses.local
    p, k, nb = cand_t.shape[:3]
    n_psi = level.psi_rad.size
    g = (ctf * y) * ps.inv_s2
    num_ref = np.zeros((2 * k * n_psi, geom.n_coeffs), complex)
    den_ref = np.zeros((2 * k * n_psi, geom.n_coeffs))
    w_all = poses.class_post[:, :, None] * wloc  # (P, K, 27 nb): candidate, psi, shift
    for i in range(p):
        for c in range(k):
            for j in range(27 * nb):
                cb, dd, e = j // 27, (j % 27) // 9, j % 9
                b = (half[i] * k + c) * n_psi + cand_psi[i, c, cb, dd]
                ph = lattice_phases(ps.tx, ps.ty, cand_t[i, c, cb, e])
                num_ref[b] += w_all[i, c, j] * g[i] * np.conj(ph)
                den_ref[b] += w_all[i, c, j] * ctf[i] ** 2 * ps.inv_s2
    for fraction, tol in ((1.0, 1e-4), (0.999, 2e-3)):
        monkeypatch.setattr(search_mod, "SIGNIFICANT_MASS", fraction)
        num = np.zeros_like(num_ref)
        den = np.zeros_like(den_ref)
        ps.backproject(num, den, y, ctf, poses, poses.class_post, half)
        scale = np.abs(num_ref).max()
        assert np.abs(num - num_ref).max() <= tol * scale, fraction
        assert np.abs(den - den_ref).max() <= tol * den_ref.max(), fraction
    kept = search_mod.significant(
        (poses.class_post[:, :, None] * wloc).reshape(p, k, nb, 3, 9).sum(-1).reshape(p, -1))
    assert kept.sum() < kept.size  # the default fraction prunes something here


def test_exhaustive_marginal_backprojection_keeps_the_significant_rows(monkeypatch):
    """Force max off, exhaustive: the backprojection leaves out only the (particle, shift,
    class) cells outside SIGNIFICANT_MASS of each particle's weight; with fraction 1 it is
    the dense sum over every pose."""
    from cryoclass.em.driver import chunk_ctf
    from cryoclass.geometry import make_geometry
    from cryoclass.numerics import estep
    from cryoclass.numerics import search as search_mod

    table, _ = make_problem(n_per=8, snr=0.3, seed=2)
    cfg = load_config(None, OPTS + ["classify.force_max=false", "search.mode=exhaustive"])
    geom = make_geometry(table.box_px, 4.0, cfg)
    shard = load_shard(table, geom, Comm(None), 0, np)
    classes = np.random.default_rng(3).standard_normal((3, geom.work_box, geom.work_box))
    level = make_level(geom, 20.0)
    rows = np.arange(shard.n_local)
    y, ctf = shard.store.take(rows), chunk_ctf(shard, rows, geom, cfg, np)
    ps = search_mod.PoseSearch((classes * 0.05).astype(np.float32), np.full(geom.n_shells, 2.0),
                               geom, level, False)
    assert not ps.c2f
    poses = ps.search(y, ctf)
    post, cp, half = poses.exhaustive, poses.class_post, shard.half
    bp = level.bp
    g = (ctf[:, bp] * y[:, bp]) * ps.inv_s2_b
    ctf2 = (ctf[:, bp] ** 2) * ps.inv_s2_b
    k, n_psi = cp.shape[1], level.psi_rad.size
    dense = [np.zeros((2 * k * n_psi, bp.size), complex), np.zeros((2 * k * n_psi, bp.size))]
    estep.accumulate_marginal(*dense, g, ctf2, ps.phases[:, bp], post, half, cp)
    cell_mass = (post.pose_weights.sum(axis=3) * cp[:, None, :]).reshape(cp.shape[0], -1)
    for fraction, tol in ((1.0, 1e-4), (0.999, 2e-3)):
        monkeypatch.setattr(search_mod, "SIGNIFICANT_MASS", fraction)
        num, den = np.zeros_like(dense[0]), np.zeros_like(dense[1])
        ps.backproject(num, den, y, ctf, poses, cp, half)
        assert np.abs(num - dense[0]).max() <= tol * np.abs(dense[0]).max(), fraction
        assert np.abs(den - dense[1]).max() <= tol * dense[1].max(), fraction
        if fraction < 1:  # cells really are left out: bins only they reached stay empty
            assert (den == 0).sum() > (dense[1] == 0).sum()
    kept = search_mod.significant(cell_mass)
    assert kept.sum() < kept.size  # the default fraction leaves cells out here
    assert (cell_mass * kept).sum(axis=1).min() >= 0.999 * cell_mass.sum(axis=1).min() - 1e-6


def test_fit_statistics_of_the_best_pose_match_its_log_likelihood():
    """cross_cor - slice_pow / 2 is the pose's log-likelihood ratio (the search's best value
    less its shift prior); resid_pow = image_pow - 2 cross_cor + slice_pow; alpha fits."""
    from cryoclass.em.driver import chunk_ctf
    from cryoclass.geometry import make_geometry
    from cryoclass.numerics.search import PoseSearch

    table, _ = make_problem(n_per=10, snr=0.5, seed=4)
    cfg = load_config(None, OPTS)
    res = classify(table, cfg, Comm(None))
    geom = make_geometry(table.box_px, 4.0, cfg)
    shard = load_shard(table, geom, Comm(None), 0, np)
    level = make_level(geom, geom.max_align_res_A)
    rows = np.arange(shard.n_local)
    y, ctf = shard.store.take(rows), chunk_ctf(shard, rows, geom, cfg, np)
    ps = PoseSearch(res.state.classes.astype(np.float32), res.state.sigma2_est, geom, level,
                    True)
    poses = ps.search(y, ctf)
    ar = np.arange(rows.size)
    best = poses.class_post.argmax(axis=1)
    shift, psi = poses.shift[ar, best], poses.psi[ar, best]
    fit = ps.fit_statistics(y, ps.model_at(ctf, best, shift, psi))
    prior = -0.5 * (shift**2).sum(axis=1) / (level.sigma_shift_px / level.shift_step_px) ** 2
    ll = poses.best_val[ar, best] - prior
    assert np.allclose(fit["cross_cor"] - 0.5 * fit["slice_pow"], ll,
                       rtol=1e-3, atol=1e-3 * np.abs(ll).max())
    assert np.allclose(fit["resid_pow"],
                       fit["image_pow"] - 2 * fit["cross_cor"] + fit["slice_pow"], rtol=1e-4)
    assert np.all(fit["resid_pow"] < fit["image_pow"])  # the best pose explains some signal
    assert 0.3 < np.median(fit["alpha"]) < 3.0

