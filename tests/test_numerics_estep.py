"""E-step numerics against slow float64 loop references on tiny random problems."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from cryoclass.numerics.estep import (
    Posteriors,
    accumulate_force_max,
    accumulate_marginal,
    best_pose_mass,
    effective_sample_size,
    logsumexp,
    pose_loglik,
    posteriors,
    residual_power,
)

from conftest import complex_dtype, host, rtol_for

DTYPES = [np.float32, np.float64]


def crandn(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def problem(seed, n_p=3, n_t=4, k=2, n_psi=3, m=11):
    """Random particles, CTFs, weights/noise, rotated references and shift phases."""
    rng = np.random.default_rng(seed)
    y = crandn(rng, n_p, m)
    ctf = rng.uniform(-1, 1, (n_p, m))
    w = rng.choice([1.0, 2.0], m)
    sigma2 = rng.uniform(0.5, 2.0, m)
    inv = w / sigma2
    inv[0] = 0.0  # a dropped coefficient
    refs = crandn(rng, k * n_psi, m)
    phases = np.exp(-2j * np.pi * rng.uniform(0, 1, (n_t, m)))
    phases[0] = 1.0
    return y, ctf, inv, refs, phases


def cast(xp, dtype, *arrays):
    out = []
    for a in arrays:
        dt = complex_dtype(dtype) if np.iscomplexobj(a) else dtype
        out.append(xp.asarray(a.astype(dt)))
    return out


# ---------------------------------------------------------------- log-likelihood


def loglik_loop(y, ctf, inv, refs, phases):
    n_p, m = y.shape
    out = np.zeros((n_p, phases.shape[0], refs.shape[0]))
    for i in range(n_p):
        for t in range(phases.shape[0]):
            for r in range(refs.shape[0]):
                total = 0.0
                for q in range(m):
                    model = ctf[i, q] * phases[t, q] * refs[r, q]
                    total += inv[q] * ((np.conj(y[i, q]) * model).real
                                       - 0.5 * ctf[i, q] ** 2 * abs(refs[r, q]) ** 2)
                out[i, t, r] = total
    return out


def loglik_residual(y, ctf, inv, refs, phases):
    """-0.5 sum w/s2 |Y - CTF S V|^2 + 0.5 sum w/s2 |Y|^2 (Gaussian log-likelihood ratio)."""
    model = ctf[:, None, None, :] * phases[None, :, None, :] * refs[None, None, :, :]
    resid = y[:, None, None, :] - model
    return (-0.5 * (inv * np.abs(resid) ** 2).sum(-1)
            + 0.5 * (inv * np.abs(y) ** 2).sum(-1)[:, None, None])


@pytest.mark.parametrize("dtype", DTYPES)
def test_pose_loglik_matches_loop_and_likelihood_identity(xp, dtype):
    y, ctf, inv, refs, phases = problem(0)
    got = host(pose_loglik(*cast(xp, dtype, y, ctf, inv, refs, phases)))
    assert got.shape == (3, 4, 6)
    assert got.dtype == dtype
    ref = loglik_loop(y, ctf, inv, refs, phases)
    assert_allclose(loglik_residual(y, ctf, inv, refs, phases), ref, rtol=1e-12, atol=1e-12)
    scale = (inv * (np.abs(y) ** 2).max() + inv * 4 * (np.abs(refs) ** 2).max()).sum()
    assert_allclose(got, ref, rtol=0, atol=20 * rtol_for(dtype) * scale)


def test_pose_loglik_prefers_the_true_pose():
    """Noise-free Y = CTF S_t V_r: the generating (t, r) has the largest ratio, equal to
    0.5 sum w/s2 |Y|^2."""
    y, ctf, inv, refs, phases = problem(1, n_p=1)
    y = ctf[0] * phases[2] * refs[4]
    ll = pose_loglik(y[None], ctf, inv, refs, phases)[0]
    assert np.unravel_index(ll.argmax(), ll.shape) == (2, 4)
    assert ll[2, 4] == pytest.approx(0.5 * (inv * np.abs(y) ** 2).sum(), rel=1e-12)


# ---------------------------------------------------------------- posteriors


def posteriors_loop(ll, k, lps, lpc, force_max):
    p, n_t, kr = ll.shape
    n_psi = kr // k
    score = np.zeros((p, k))
    best = np.zeros((p, k, 2), int)
    weights = np.zeros((p, n_t, k, n_psi))
    for i in range(p):
        for c in range(k):
            vals = np.array([[ll[i, t, c * n_psi + j] + lps[t] for j in range(n_psi)]
                             for t in range(n_t)])
            best[i, c] = np.unravel_index(vals.argmax(), vals.shape)
            if force_max:
                score[i, c] = vals.max()
            else:
                mx = vals.max()
                lse = mx + np.log(np.exp(vals - mx).sum())
                score[i, c] = lse - np.log(n_psi)
                weights[i, :, c, :] = np.exp(vals - lse)
    logits = score + lpc
    cp = np.exp(logits - logits.max(axis=1, keepdims=True))
    cp /= cp.sum(axis=1, keepdims=True)
    return cp, score, best, weights


@pytest.mark.parametrize("force_max", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_posteriors_match_loop(xp, force_max, dtype):
    rng = np.random.default_rng(2)
    p, n_t, k, n_psi = 5, 4, 3, 6
    ll = rng.normal(0, 3, (p, n_t, k * n_psi))
    ll[0] += 1e4 if dtype == np.float64 else 50.0  # large magnitudes must not overflow
    lps = np.log(rng.dirichlet(np.ones(n_t)))
    lpc = np.log(rng.dirichlet(np.ones(k)))
    post = posteriors(xp.asarray(ll.astype(dtype)), k, xp.asarray(lps.astype(dtype)),
                      xp.asarray(lpc), force_max)
    cp, score, best, weights = posteriors_loop(ll.astype(dtype).astype(np.float64), k,
                                               lps.astype(dtype).astype(np.float64), lpc,
                                               force_max)
    tol = 50 * rtol_for(dtype)
    assert_allclose(host(post.class_post).sum(axis=1), 1.0, rtol=1e-12)
    assert_allclose(host(post.class_post), cp, rtol=0,
                    atol=5 * rtol_for(dtype) * np.abs(ll).max())
    assert_allclose(host(post.class_score), score, rtol=tol, atol=tol)
    assert_allclose(host(post.best_shift), best[..., 0])
    assert_allclose(host(post.best_psi), best[..., 1])
    bl = np.array([[ll[i, best[i, c, 0], c * n_psi + best[i, c, 1]] for c in range(k)]
                   for i in range(p)])
    assert_allclose(host(post.best_loglik), bl, rtol=tol)
    if force_max:
        assert post.pose_weights is None
    else:
        pw = host(post.pose_weights)
        assert pw.shape == (p, n_t, k, n_psi)
        assert_allclose(pw.sum(axis=(1, 3)), 1.0, rtol=tol)
        assert_allclose(pw, weights, rtol=0, atol=tol)


def test_marginal_score_of_flat_loglik():
    """Equal L over psi and shifts: log-marginal = L + log(sum of shift prior) = L."""
    ll = np.full((1, 3, 2 * 5), 7.0)
    lps = np.log(np.full(3, 1 / 3))
    post = posteriors(ll, 2, lps, np.log([0.5, 0.5]), force_max=False)
    assert_allclose(post.class_score, 7.0, rtol=1e-14)
    assert_allclose(post.class_post, 0.5)
    assert_allclose(post.pose_weights, 1 / 15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_best_pose_mass_is_the_largest_marginal_pose_weight(xp, dtype):
    rng = np.random.default_rng(5)
    p, n_t, k, n_psi = 4, 5, 3, 7
    ll = rng.normal(0, 4, (p, n_t, k * n_psi))
    ll[1, 2, n_psi + 3] += 40.0  # one pose of class 1 dominates: mass near 1
    lps = np.log(rng.dirichlet(np.ones(n_t)))
    mass = host(best_pose_mass(xp.asarray(ll.astype(dtype)), k, xp.asarray(lps.astype(dtype))))
    ref = np.empty((p, k))
    for i in range(p):
        for c in range(k):
            lp = ll[i, :, c * n_psi:(c + 1) * n_psi] + lps[:, None]
            w = np.exp(lp - lp.max())
            ref[i, c] = w.max() / w.sum()
    assert_allclose(mass, ref, rtol=50 * rtol_for(dtype))
    assert mass[1, 1] > 0.999
    flat = best_pose_mass(np.zeros((2, n_t, k * n_psi)), k, np.log(np.full(n_t, 1 / n_t)))
    assert_allclose(flat, 1 / (n_t * n_psi), rtol=1e-12)


def test_logsumexp():
    a = np.array([[1000.0, 1000.0], [-np.inf, 0.0], [-np.inf, -np.inf]])
    with np.errstate(divide="ignore"):
        out = logsumexp(a, axis=1)
    assert_allclose(out, [1000 + np.log(2), 0.0, -np.inf])


def test_effective_sample_size(xp):
    k = 7
    one_hot = np.eye(k)[[2, 5]]
    assert_allclose(host(effective_sample_size(xp.asarray(one_hot))), 1.0)
    assert_allclose(host(effective_sample_size(xp.asarray(np.full((3, k), 1 / k)))), k)
    # 50 / 25 / 25: 1 / (0.25 + 0.0625 + 0.0625) = 8/3 (the guide's prose says "slightly
    # less than 2", but its own definition 1 / sum p^2, which SPEC adopts, gives 8/3)
    ess = effective_sample_size(xp.asarray(np.array([[0.5, 0.25, 0.25]])))
    assert_allclose(host(ess), [8 / 3])
    assert 1.0 < float(host(ess)[0]) < 3.0


# ---------------------------------------------------------------- accumulation


def accum_problem(seed, p=9, k=2, n_psi=3, n_t=4, m=6):
    rng = np.random.default_rng(seed)
    g = crandn(rng, p, m)
    ctf2 = rng.uniform(0, 1, (p, m))
    phases = np.exp(-2j * np.pi * rng.uniform(0, 1, (n_t, m)))
    half = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0])[:p]
    weights = rng.dirichlet(np.ones(k), p)
    weights[0] = [1.0, 0.0]
    weights[3] = [0.99995, 0.00005]  # below p_min: skipped in force max
    best_shift = rng.integers(0, n_t, (p, k))
    best_psi = rng.integers(0, 2, (p, k))  # only psi 0/1: plenty of repeated bins
    pw = rng.uniform(0, 1, (p, n_t, k, n_psi))
    pw /= pw.sum(axis=(1, 3), keepdims=True)
    post = Posteriors(None, best_shift, best_psi, None, pw, None)
    return g, ctf2, phases, half, weights, post, (k, n_psi)


def _to(xp, dtype, post):
    return Posteriors(None, xp.asarray(post.best_shift), xp.asarray(post.best_psi), None,
                      xp.asarray(post.pose_weights.astype(dtype)), None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulate_force_max_matches_loop(xp, dtype):
    g, ctf2, phases, half, weights, post, (k, n_psi) = accum_problem(3)
    m = g.shape[1]
    rng = np.random.default_rng(4)
    num0 = crandn(rng, 2 * k * n_psi, m)
    den0 = rng.uniform(0, 1, (2 * k * n_psi, m))
    num_ref, den_ref = num0.copy(), den0.copy()
    for i in range(g.shape[0]):
        for c in range(k):
            if weights[i, c] <= 1e-4:
                continue
            b = (half[i] * k + c) * n_psi + post.best_psi[i, c]
            num_ref[b] += weights[i, c] * g[i] * np.conj(phases[post.best_shift[i, c]])
            den_ref[b] += weights[i, c] * ctf2[i]
    num, den = xp.asarray(num0), xp.asarray(den0)
    gd, c2d, phd, wd = cast(xp, dtype, g, ctf2, phases, weights)
    accumulate_force_max(num, den, gd, c2d, phd, _to(xp, dtype, post), xp.asarray(half), wd)
    assert num.dtype == np.complex128 and den.dtype == np.float64
    tol = 20 * rtol_for(dtype)
    assert_allclose(host(num), num_ref, rtol=0, atol=tol * 10)
    assert_allclose(host(den), den_ref, rtol=0, atol=tol * 10)
    # repeated bins really occurred (the p < p_min entry is checked by the float64 run)
    bins = (half[:, None] * k + np.arange(k)) * n_psi + post.best_psi
    assert len(np.unique(bins)) < bins.size


def test_accumulate_force_max_nothing_to_add():
    g, ctf2, phases, half, weights, post, (k, n_psi) = accum_problem(5)
    num = np.zeros((2 * k * n_psi, g.shape[1]), complex)
    den = np.zeros((2 * k * n_psi, g.shape[1]))
    accumulate_force_max(num, den, g, ctf2, phases, post, half, np.zeros_like(weights))
    assert not num.any() and not den.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kept", ["all_rows", "some_rows"])
def test_accumulate_marginal_matches_loop(xp, dtype, kept):
    """The GEMMs equal the loop over every (kept) (particle, shift, class) cell and psi."""
    g, ctf2, phases, half, weights, post, (k, n_psi) = accum_problem(6)
    p, m = g.shape
    n_t = phases.shape[0]
    rng = np.random.default_rng(7)
    num0 = crandn(rng, 2 * k * n_psi, m)
    den0 = rng.uniform(0, 1, (2 * k * n_psi, m))
    keep = np.ones((p, n_t, k), bool)
    if kept == "some_rows":
        keep = rng.uniform(size=(p, n_t, k)) < 0.4
        keep[0] = False  # a particle with nothing kept
        keep[1, :, 1] = False  # a class with nothing kept for one particle
    num_ref, den_ref = num0.copy(), den0.copy()
    for i, t, c in zip(*np.nonzero(keep)):
        for j in range(n_psi):
            wt = post.pose_weights[i, t, c, j] * weights[i, c]
            b = (half[i] * k + c) * n_psi + j
            num_ref[b] += wt * g[i] * np.conj(phases[t])
            den_ref[b] += wt * ctf2[i]
    num, den = xp.asarray(num0), xp.asarray(den0)
    gd, c2d, phd, wd = cast(xp, dtype, g, ctf2, phases, weights)
    accumulate_marginal(num, den, gd, c2d, phd, _to(xp, dtype, post), xp.asarray(half), wd,
                        keep=None if kept == "all_rows" else xp.asarray(keep))
    tol = 20 * rtol_for(dtype)
    assert_allclose(host(num), num_ref, rtol=0, atol=tol * 10)
    assert_allclose(host(den), den_ref, rtol=0, atol=tol * 10)


def test_accumulate_marginal_one_half_only():
    g, ctf2, phases, half, weights, post, (k, n_psi) = accum_problem(8)
    num = np.zeros((2 * k * n_psi, g.shape[1]), complex)
    den = np.zeros((2 * k * n_psi, g.shape[1]))
    accumulate_marginal(num, den, g, ctf2, phases, post, np.zeros_like(half), weights)
    assert not num[k * n_psi:].any() and not den[k * n_psi:].any()
    # all weight lands in half 0: total den = sum_i sum_c w_ic ctf2_i
    assert_allclose(den.sum(axis=0), (weights.sum(axis=1)[:, None] * ctf2).sum(axis=0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_power_matches_loop(xp, dtype):
    rng = np.random.default_rng(9)
    p, k, n_psi, n_t, m = 4, 2, 3, 5, 13
    y = crandn(rng, p, m)
    ctf = rng.uniform(-1, 1, (p, m))
    refs = crandn(rng, k * n_psi, m)
    phases = np.exp(-2j * np.pi * rng.uniform(0, 1, (n_t, m)))
    cls = rng.integers(0, k, p)
    t_idx = rng.integers(0, n_t, p)
    psi_idx = rng.integers(0, n_psi, p)
    shell = rng.integers(0, 5, m)
    n_shells = 6  # the last shell is empty
    ref = np.zeros(n_shells)
    for i in range(p):
        for q in range(m):
            model = ctf[i, q] * phases[t_idx[i], q] * refs[cls[i] * n_psi + psi_idx[i], q]
            ref[shell[q]] += abs(y[i, q] - model) ** 2
    yd, cd, rd, phd = cast(xp, dtype, y, ctf, refs, phases)
    got = host(residual_power(yd, cd, rd, phd, xp.asarray(cls), xp.asarray(t_idx),
                              xp.asarray(psi_idx), xp.asarray(shell), n_shells, n_psi))
    assert got.shape == (n_shells,) and got.dtype == np.float64
    assert got[-1] == 0.0
    assert_allclose(got, ref, rtol=20 * rtol_for(dtype))


def test_run_sums_sparse_and_cumulative_agree_with_a_loop():
    """The CPU (sparse) and GPU (cumulative-sum) per-bin sums, both run here with NumPy."""
    from cryoclass.numerics.estep import _run_sums_cumsum, _run_sums_sparse

    rng = np.random.default_rng(7)
    n, m, p = 40, 6, 9
    bins = np.sort(rng.integers(0, 12, n))
    first = np.flatnonzero(np.concatenate([[True], bins[1:] != bins[:-1]]))
    w = rng.uniform(0.1, 1.0, n)
    for mat, cols in ((rng.standard_normal((n, m)) + 1j * rng.standard_normal((n, m)), None),
                      (rng.standard_normal((p, m)), rng.integers(0, p, n))):
        mat = mat.astype(np.complex64 if np.iscomplexobj(mat) else np.float32)
        rows = mat if cols is None else mat[cols]
        ref = np.array([(w[bins == b][:, None] * rows[bins == b]).sum(axis=0)
                        for b in bins[first]])
        out_dtype = np.complex128 if np.iscomplexobj(mat) else np.float64
        for got in (_run_sums_sparse(mat, cols, w, first),
                    _run_sums_cumsum(mat, cols, w, first, out_dtype)):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)

