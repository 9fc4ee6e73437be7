r"""E-step: pose and class log-likelihoods as matrix products, and M-step statistics.

Posteriors and the particle-frame sufficient statistics for the M-step are here too.

For particle i (Fourier coefficients :math:`Y_i(k)` on the half plane inside the
alignment band, Hermitian weights :math:`w_k` in {1, 2}, noise :math:`\sigma^2_k`),
shift t (phase :math:`S_t`), class k rotated by psi (:math:`V_{k\psi} = R_\psi A_k`):

.. math::

    L_{i t k \psi} = \sum_k \frac{w_k}{\sigma^2_k}\left[
        \mathrm{Re}\!\left(\overline{Y_i}\, \mathrm{CTF}_i\, S_t\, V_{k\psi}\right)
        - \tfrac12 \mathrm{CTF}_i^2 |V_{k\psi}|^2 \right]

(the log-likelihood ratio against the empty model :math:`A = 0`). The cross term is
one real GEMM: rows ``(i, t)`` hold ``[Re U, Im U]`` with
:math:`U_{it} = \overline{Y_i}\,\mathrm{CTF}_i\, w/\sigma^2\, S_t`, columns ``(k, psi)``
hold ``[Re V, -Im V]``; the norm term is a second GEMM of
:math:`\mathrm{CTF}_i^2 w/\sigma^2` against :math:`|V|^2`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoclass.backend import array_namespace


def _real_view(a):
    """View a C-contiguous complex (..., M) array as real (..., 2M)."""
    xp = array_namespace(a)
    a = xp.ascontiguousarray(a)
    rdt = np.float32 if a.dtype == np.complex64 else np.float64
    return a.view(rdt)


def pose_loglik(y, ctf, inv_sigma2_w, refs, phases):
    """Log-likelihood ratios of all poses and classes for a chunk of particles.

    Parameters
    ----------
    y : complex (n_particles, M)
        Particle coefficients in the alignment band.
    ctf : real (n_particles, M)
    inv_sigma2_w : real (M,)
        Hermitian weight over noise variance, ``w_k / sigma2_k`` (0 to drop a coefficient).
    refs : complex (n_refs, M)
        Rotated class coefficients, ``n_refs = n_classes * n_psi``.
    phases : complex (n_shifts, M)
        ``S_t(k)``.

    Returns
    -------
    real (n_particles, n_shifts, n_refs)
    """
    xp = array_namespace(y)
    z = xp.conj(y) * (ctf * inv_sigma2_w[None, :])  # (n_p, M)
    u = z[:, None, :] * phases[None, :, :]  # (n_p, n_t, M)
    n_p, n_t, m = u.shape
    uf = _real_view(u).reshape(n_p * n_t, 2 * m)
    vf = _real_view(xp.conj(refs))  # (n_refs, 2M) = [Re V, -Im V]
    cross = (uf @ vf.T).reshape(n_p, n_t, -1)  # (n_p, n_t, n_refs)
    power = (refs.real**2 + refs.imag**2).astype(uf.dtype)  # (n_refs, M)
    norm = ((ctf * ctf) * inv_sigma2_w[None, :]).astype(uf.dtype) @ power.T  # (n_p, n_refs)
    cross -= 0.5 * norm[:, None, :]  # in place: the table is the chunk's largest array
    return cross


def logsumexp(a, axis):
    """Numerically stable log-sum-exp along axes (xp-generic)."""
    xp = array_namespace(a)
    m = a.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0.0)
    out = xp.log(xp.exp(a - m).sum(axis=axis, keepdims=True)) + m
    return xp.squeeze(out, axis=axis)


@dataclass
class Posteriors:
    """Per-particle results of one chunk (arrays on the compute device).

    Shapes: ``P`` particles, ``K`` classes.
    """

    class_post: object  # (P, K) class posteriors p_ik
    best_shift: object  # (P, K) int index of the best shift per class
    best_psi: object  # (P, K) int index of the best rotation per class
    best_loglik: object  # (P, K) L at the best pose of each class
    pose_weights: object | None  # (P, n_shifts, K, n_psi) within-class pose posteriors
    class_score: object  # (P, K) class log-evidence (max or log-marginal over poses)
    pose_mass: object | None = None  # (P, K) best pose's mass within each class


def class_pose_table(loglik, n_classes: int, log_prior_shift):
    """Log-likelihoods plus the shift prior, per class: (P, K, n_shifts * n_psi).

    Parameters
    ----------
    loglik : real (P, n_shifts, K * n_psi)
    """
    xp = array_namespace(loglik)
    p, n_t, kr = loglik.shape
    lp = loglik.reshape(p, n_t, n_classes, kr // n_classes) + log_prior_shift[None, :, None, None]
    return xp.moveaxis(lp, 2, 1).reshape(p, n_classes, n_t * (kr // n_classes))


def top_coarse_poses(loglik, n_classes: int, log_prior_shift, n_best: int):
    """Return the ``n_best`` best coarse poses of each class and the best pose's mass.

    Parameters
    ----------
    loglik : real (P, n_shifts, K * n_psi)

    Returns
    -------
    shift and psi indices (P, K, n_best), and :func:`best_pose_mass` (P, K)
    """
    xp = array_namespace(loglik)
    n_psi = loglik.shape[2] // n_classes
    flat = class_pose_table(loglik, n_classes, log_prior_shift)
    n_best = min(n_best, flat.shape[2])
    if n_best == 1:
        top = flat.argmax(axis=2)[..., None]
    else:
        top = xp.argpartition(-flat, n_best - 1, axis=2)[..., :n_best]
    return top // n_psi, top % n_psi, _best_mass(flat.max(axis=2), logsumexp(flat, axis=2))


def best_pose_mass(loglik, n_classes: int, log_prior_shift):
    r"""Posterior mass of each class's best pose among that class's poses: (P, K).

    ``exp(max_j l_j - log sum_j exp l_j)`` over the poses j (shift x psi) of the grid in
    ``loglik``, with the shift prior (RELION's ``rlnMaxValueProbDistribution`` for one
    class). 1 when one pose holds all the mass, ``1 / n_poses`` when none stands out.

    Parameters
    ----------
    loglik : real (P, n_shifts, K * n_psi)
    """
    flat = class_pose_table(loglik, n_classes, log_prior_shift)
    return _best_mass(flat.max(axis=2), logsumexp(flat, axis=2))


def _best_mass(best, lse):
    """:func:`best_pose_mass` from a class's best value and log-sum-exp over its poses."""
    return array_namespace(best).exp(best - lse)


def posteriors(loglik, n_classes: int, log_prior_shift, log_prior_class, force_max: bool):
    """Class posteriors (always marginal over classes) and pose posteriors.

    ``loglik`` is consumed: the table is overwritten in place (with force max off it
    becomes the pose weights), so that the chunk's largest array is not copied.

    Parameters
    ----------
    loglik : real (P, n_shifts, K * n_psi), C-contiguous
    log_prior_shift : real (n_shifts,)
        Normalized log prior of each shift.
    log_prior_class : real (K,)
    force_max : bool
        Class evidence is the best pose (True) or the marginal over poses (False,
        with a uniform prior over psi).
    """
    xp = array_namespace(loglik)
    p, n_t, kr = loglik.shape
    n_psi = kr // n_classes
    lp = loglik.reshape(p, n_t, n_classes, n_psi)
    lp += log_prior_shift[None, :, None, None]
    # best pose per class: the first (shift, psi) in row-major order that holds the maximum
    per_shift = lp.max(axis=3)  # (P, n_t, K)
    best_shift = per_shift.argmax(axis=1)  # (P, K)
    best_val = xp.take_along_axis(per_shift, best_shift[:, None, :], axis=1)[:, 0, :]
    del per_shift
    ar, kk = xp.arange(p)[:, None], xp.arange(n_classes)[None, :]
    best_psi = lp[ar, best_shift, kk, :].argmax(axis=2)  # (P, K)
    best_ll = best_val - log_prior_shift[best_shift]  # L at the best pose, no shift prior
    # in place: exp(l - best) per class, its sum over the class's poses
    lp -= best_val[:, None, :, None]
    xp.exp(lp, out=lp)
    total = lp.sum(axis=3).sum(axis=1)  # (P, K), >= 1
    mass = 1.0 / total  # best_pose_mass: the best pose holds exp(0) = 1 of the sum
    lse = best_val + xp.log(total)
    weights = None
    if force_max:
        score = best_val
    else:
        score = lse - np.log(n_psi)
        lp /= total[:, None, :, None]  # within-class pose weights, summing to 1 over poses
        weights = lp  # (P, n_t, K, n_psi)
    logits = score.astype(np.float64) + log_prior_class[None, :]
    logits = logits - logits.max(axis=1, keepdims=True)
    cp = xp.exp(logits)
    cp /= cp.sum(axis=1, keepdims=True)
    return Posteriors(cp, best_shift, best_psi, best_ll, weights, score, mass)


def effective_sample_size(class_post):
    """ESS over classes, ``1 / sum_k p_ik^2``: shape (P,)."""
    return 1.0 / (class_post**2).sum(axis=1)


def accumulate_force_max(num, den, g, ctf2, phases_full, post: Posteriors, half,
                         weights, p_min: float = 1e-4):
    """Add one chunk's best-pose contributions to particle-frame bins (in place).

    Parameters
    ----------
    num : complex128 (2 * K * n_psi, M_f)
        Bins ``(half, class, psi)``: sum of ``w * CTF * Y * conj(S_t)``.
    den : float64 (2 * K * n_psi, M_f)
        Same bins: sum of ``w * CTF^2``.
    g : complex (P, M_f)
        ``CTF_i * Y_i`` on the averaging disk.
    ctf2 : real (P, M_f)
    phases_full : complex (n_shifts, M_f)
    weights : real (P, K)
        Class weights for the M-step (posteriors, or one-hot for hard classification).
    half : int (P,) half-set 0/1.
    """
    xp = array_namespace(g)
    k = weights.shape[1]
    n_psi = num.shape[0] // (2 * k)
    ii, kk = xp.nonzero(weights > p_min)
    if ii.size == 0:
        return
    bins, ii, kk = sort_pairs((half[ii] * k + kk) * n_psi + post.best_psi[ii, kk], ii, kk)
    accumulate_pairs(num, den, g, ctf2, ii, bins, phases_full[post.best_shift[ii, kk]],
                     weights[ii, kk])


def sort_pairs(bins, *index):
    """Return ``bins`` sorted (stable) and each index array of the pairs in that order."""
    order = array_namespace(bins).argsort(bins, kind="stable")
    return (bins[order], *(a[order] for a in index))


def accumulate_pairs(num, den, g, ctf2, rows, bins, phase_rows, w, den_w=None):
    """Add weighted, un-shifted particles to bins (in place).

    ``num[b] += w g_i conj(S)`` and ``den[b] += w CTF_i^2`` for each pair.

    Parameters
    ----------
    rows : int (n,) particle of each pair
    bins : int (n,) target bin of each pair, sorted ascending (the caller sorts the pairs
        with :func:`sort_pairs` before it builds their phase rows, so no row array is
        permuted here)
    phase_rows : complex (n, M_f) the pair's shift phases S_t (or a weighted sum of them)
    w : real (n,) weights of the numerator rows
    den_w : real (n,), optional
        Weights of the denominator rows (default ``w``).
    """
    xp = array_namespace(g)
    # g conj(S) = conj(conj(g) S): the conjugate is taken of the per-bin sums, not the rows
    _segment_add(num, bins, xp.conj(g)[rows] * phase_rows, None, w, conj=True)
    _segment_add(den, bins, ctf2, rows, w if den_w is None else den_w)


def lattice_tables(ky, kx, n: int, step_px: float, reach: int, xp=np, dtype=np.complex64):
    """Per-axis phase tables for shifts on the lattice ``t = step * (a, b)``.

    ``S_t(k) = Tx[a + reach, k] * Ty[b + reach, k]`` for integers ``|a|, |b| <= reach``.

    Returns
    -------
    tx, ty : complex (2 * reach + 1, M)
    """
    j = np.arange(-reach, reach + 1, dtype=np.float64)[:, None] * step_px
    tx = np.exp(-2j * np.pi * j * np.asarray(kx, dtype=np.float64)[None, :] / n)
    ty = np.exp(-2j * np.pi * j * np.asarray(ky, dtype=np.float64)[None, :] / n)
    return xp.asarray(tx.astype(dtype)), xp.asarray(ty.astype(dtype))


def lattice_phases(tx, ty, ab):
    """Phase rows for integer lattice shifts ``ab`` (..., 2) -> (..., M)."""
    reach = (tx.shape[0] - 1) // 2
    return tx[ab[..., 0] + reach] * ty[ab[..., 1] + reach]


def refine_local(z, ctf2w, refs, tx, ty, ab_coarse, psi_coarse, sigma_t_steps: float,
                 cls=None, refs_power=None):
    r"""Fine poses around each (particle, class)'s best coarse pose.

    For every particle i and class k the 3 rotations ``psi_c + (-1, 0, 1)`` (fine grid
    indices) and the 9 lattice shifts ``ab_c + (da, db)``, ``da, db in {-1, 0, 1}``, are
    evaluated at full alignment resolution:
    :math:`L = \mathrm{Re}\sum z S_t V - \tfrac12 \sum \mathrm{CTF}^2 w/\sigma^2 |V|^2
    - |t|^2 / (2 \sigma_t^2)`.

    Parameters
    ----------
    z : complex (P, M) ``conj(Y) CTF w / sigma^2`` on the alignment band
    ctf2w : real (P, M) ``CTF^2 w / sigma^2``
    refs : complex (K, n_psi, M) rotated classes on the band
    tx, ty : lattice phase tables on the band (:func:`lattice_tables`)
    ab_coarse : int (P, J, 2) coarse candidate shifts in lattice steps
    psi_coarse : int (P, J) coarse candidate rotations as fine-grid indices
    sigma_t_steps : float, shift prior width in lattice steps
    cls : int (P, J), optional
        Class of each candidate (default: candidate j is class j).
    refs_power : real (K, n_psi, M), optional
        ``|refs|^2`` (computed here when not given; a search computes it once per
        iteration).

    Returns
    -------
    loglik : real (P, J, 3, 9), ab : int (P, J, 9, 2), psi_idx : int (P, J, 3)
    """
    xp = array_namespace(z)
    p, k = psi_coarse.shape
    n_psi = refs.shape[1]
    d = xp.asarray(np.array([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]))
    ab = ab_coarse[:, :, None, :] + d[None, None]  # (P, K, 9, 2)
    psi_idx = (psi_coarse[:, :, None] + xp.asarray(np.array([-1, 0, 1]))[None, None]) % n_psi
    if cls is None:
        kk = xp.broadcast_to(xp.arange(k)[None, :, None], psi_idx.shape)
    else:
        kk = xp.broadcast_to(cls[:, :, None], psi_idx.shape)
    v = refs[kk, psi_idx]  # (P, J, 3, M)
    # S_{ab + d} = S_ab S_d: the 9 local shifts are one GEMM against shared phase rows
    reach = (tx.shape[0] - 1) // 2
    s_d = tx[d[:, 0] + reach] * ty[d[:, 1] + reach]  # (9, M)
    u = z[:, None, :] * lattice_phases(tx, ty, ab_coarse)  # (P, J, M)
    w = u[:, :, None, :] * v  # (P, J, 3, M)
    m = z.shape[1]
    wf = _real_view(w).reshape(-1, 2 * m)  # [Re w, Im w]
    sf = _real_view(xp.conj(s_d))  # [Re S, -Im S]: Re(w S) = Re w Re S - Im w Im S
    cross = (wf @ sf.T).reshape(p, k, 3, 9)
    if refs_power is None:
        refs_power = refs.real**2 + refs.imag**2
    # a per-row sum (as the cross term's GEMM rows): a particle's value does not depend on
    # the chunk it is in, which rank invariance needs
    norm = (refs_power[kk, psi_idx] * ctf2w[:, None, None, :]).sum(axis=-1)  # (P, J, 3)
    prior = -0.5 * (ab**2).sum(axis=-1).astype(z.real.dtype) / sigma_t_steps**2  # (P, J, 9)
    ll = cross - 0.5 * norm[..., None] + prior[:, :, None, :]
    return ll, ab, psi_idx


def _segment_add(target, bins, mat, cols, w, conj: bool = False):
    """``target[bins[j]] += w[j] mat[cols[j]]`` (conjugated if ``conj``) for sorted bins.

    ``cols`` None means ``mat``'s rows in order (one row per pair). NumPy: one sparse
    (bins x rows of ``mat``) matrix of the weights times ``mat``, summed in ``mat``'s
    precision (one chunk of particles: a few hundred terms per bin) and added to
    ``target`` (float64); on a GPU: differences of one float64 cumulative sum.
    """
    xp = array_namespace(mat)
    n = bins.shape[0]
    if n == 0:
        return
    edge = xp.concatenate([xp.asarray([True]), bins[1:] != bins[:-1]])
    first = xp.nonzero(edge)[0]
    if xp is np:
        sums = _run_sums_sparse(mat, cols, w, first)
    else:
        sums = _run_sums_cumsum(mat, cols, w, first, target.dtype)
    target[bins[first]] += xp.conj(sums) if conj else sums


def _run_sums_sparse(mat, cols, w, first):
    """Sum the runs starting at ``first`` of ``w[j] mat[cols[j]]`` with a SciPy CSR (CPU)."""
    from scipy.sparse import csr_matrix

    n = w.shape[0]
    idx = np.arange(n) if cols is None else cols
    indptr = np.concatenate([first, [n]])
    s = csr_matrix((w.astype(mat.real.dtype), idx, indptr), shape=(first.size, mat.shape[0]))
    return s @ mat


def _run_sums_cumsum(mat, cols, w, first, dtype):
    """Sum the same runs as differences of one cumulative sum in ``dtype`` (any xp)."""
    xp = array_namespace(mat)
    n = w.shape[0]
    rows = mat if cols is None else mat[cols]
    # float64 cumulative sums: their differences would lose float32 precision
    cs = xp.cumsum((rows * w[:, None].astype(mat.real.dtype)).astype(dtype), axis=0)
    last = xp.concatenate([first[1:] - 1, xp.asarray([n - 1])])
    sums = cs[last]
    sums[1:] = sums[1:] - cs[last[:-1]]
    return sums


def accumulate_marginal(num, den, g, ctf2, phases_full, post: Posteriors, half, weights,
                        keep=None):
    """Add one chunk's pose-marginalized contributions (in place).

    ``keep`` (bool (P, n_shifts, K), optional) selects the (particle, shift, class) cells
    that are backprojected with all their rotations' weights; the others are left out
    (default: every cell). Per class and half-set the numerator is one GEMM of the kept
    cells' rotation weights (pose weight times class weight) against their shifted
    particles ``g_i conj(S_t)``, so its cost follows the classes a particle belongs to,
    not K; the denominator is one GEMM of the kept weights summed over shifts against
    CTF^2.
    """
    xp = array_namespace(g)
    pw = post.pose_weights
    p, n_t, k, n_psi = pw.shape
    if keep is None:
        keep = xp.ones((p, n_t, k), dtype=bool)
    # sum over the kept shifts of each (particle, class, psi) weight, times the class weight
    wsum = xp.einsum("ptk,ptkj->pkj", keep.astype(pw.dtype), pw) * weights[:, :, None]
    wsum = wsum.reshape(p, k * n_psi).astype(ctf2.dtype)
    conj_phases = xp.conj(phases_full)
    # the float64 bins as real (.., 2 M_f): the chunk's float32 sums are added in place,
    # without a float64 copy of each (the bins are the iteration's largest array)
    num_re = num.view(np.float64)
    for h in (0, 1):
        sel = xp.nonzero(half == h)[0]
        if sel.size == 0:
            continue
        base = h * k * n_psi
        den[base:base + k * n_psi] += wsum[sel].T @ ctf2[sel]
        for c in range(k):
            ii, tt = xp.nonzero(keep[sel, :, c])  # the kept (particle, shift) rows of c
            if ii.size == 0:
                continue
            ii = sel[ii]
            wmat = (pw[ii, tt, c, :] * weights[ii, c][:, None]).astype(g.real.dtype)
            gf = _real_view(g[ii] * conj_phases[tt])  # (rows, 2 M_f)
            num_re[base + c * n_psi:base + (c + 1) * n_psi] += wmat.T @ gf  # (n_psi, 2 M_f)


def residual_power(y_full, ctf_full, refs_full, phases_full, cls, t_idx, psi_idx,
                   shell, n_shells: int, n_psi: int):
    """Per-shell residual power at each particle's best pose, summed over particles.

    Parameters
    ----------
    y_full, ctf_full : (P, M_f)
    refs_full : complex (K * n_psi, M_f)
    cls, t_idx, psi_idx : int (P,)
    shell : int (M_f,)

    Returns
    -------
    float64 (n_shells,): ``sum_i |Y_i - CTF_i S_t R_psi A_k|^2`` per shell.
    """
    return residual_power_at(y_full, ctf_full, refs_full[cls * n_psi + psi_idx],
                             phases_full[t_idx], shell, n_shells)


def residual_power_at(y_full, ctf_full, model_refs, phase_rows, shell, n_shells: int):
    """Per-shell power of ``Y - CTF S V`` for given per-particle references and phases."""
    return shell_power(y_full - ctf_full * phase_rows * model_refs, shell, n_shells)


def shell_power(r, shell, n_shells: int):
    """Per-shell ``sum |r|^2`` over the rows of ``r`` (P, M), in float64: (n_shells,)."""
    xp = array_namespace(r)
    pw = (r.real.astype(np.float64) ** 2 + r.imag.astype(np.float64) ** 2).sum(axis=0)
    return xp.bincount(shell, weights=pw, minlength=n_shells)[:n_shells]
