r"""M-step: particle-frame bins -> class frame, half-set FRC, Wiener-regularized averages.

Per class k and half-set h the E-step sums, in the frame of each rotation psi,
:math:`B_{hk\psi}(q) = \sum w\, \mathrm{CTF}_i Y_i \overline{S_t}` and
:math:`C_{hk\psi}(q) = \sum w\, \mathrm{CTF}_i^2`. Rotating each bin back,
:math:`N_{hk}(q) = \sum_\psi B_{hk\psi}(R_\psi q)` and likewise :math:`D_{hk}`.

The class average (both halves) is the Wiener estimate

.. math::

    A_k(q) = \frac{N_k(q)}{D_k(q) + \bar D_k(s) / (T\,\mathrm{SSNR}_k(s))},\qquad
    \mathrm{SSNR}_k(s) = \frac{2\,\mathrm{FRC}_k(s)}{1 - \mathrm{FRC}_k(s)}

with :math:`\mathrm{FRC}_k` the Fourier ring correlation between the half averages
:math:`N_{hk}/D_{hk}` in shell s, :math:`\bar D_k(s)` the shell mean of :math:`D_k`
and T the regularization strength. This equals RELION's
:math:`\sum w\,\mathrm{CTF}\,Y/\sigma^2 / (\sum w\,\mathrm{CTF}^2/\sigma^2 + 1/\tau^2)`
with :math:`\tau^2 = T\,\mathrm{SSNR}\,\sigma^2/\bar D`: the per-shell noise cancels.
Without FRC regularization a small Tikhonov term :math:`10^{-3} \bar D_k(s)` is used.
"""

from __future__ import annotations

import numpy as np

from cryoclass.backend import array_namespace, to_host
from cryoclass.numerics.fourier import to_real
from cryoclass.numerics.transforms import interpolation_plan, padded_transform, turns_fit


def scatter_half_plane(values, index, n: int):
    """Place coefficients given at flat half-plane ``index`` into (B, n, n//2+1) grids."""
    xp = array_namespace(values)
    out = xp.zeros((values.shape[0], n * (n // 2 + 1)), dtype=values.dtype)
    out[:, index] = values
    return out.reshape(values.shape[0], n, n // 2 + 1)


#: Bound on the elements of one batch of :func:`bins_to_class_frame` (its padded
#: transforms and its gather ``(2K, rotations, M, 4)``): about 16 MB of complex128.
CLASS_FRAME_BATCH = 1_000_000


def bins_to_class_frame(num_bins, den_bins, n: int, index, ky, kx, psi_rad, pad: int):
    """Rotate particle-frame bins back into the class frame and sum over psi.

    ``N(q) = sum_j B_j(R(psi_j) q)``. On a grid of ``n_psi`` equal steps the rotations
    ``psi_j + 360 r / d`` (r = 0 .. d-1; d = 4 when ``n_psi`` is a multiple of 4, else 2)
    differ from ``psi_j`` by quarter or half turns, which map the sampling lattice onto
    itself; their bins are summed exactly after those turns and only ``n_psi / d`` sums
    are rotated by interpolation, with the same result as rotating every bin alone (to
    rounding): the numerator's turns are pixel permutations of the pre-compensated images
    inside the padded box (:func:`~cryoclass.numerics.transforms.padded_transform`), then
    sampled on the padded transform as
    :func:`~cryoclass.numerics.transforms.rotate_coefficients` does; the CTF^2
    denominator (real and even) is turned by index permutations of the coefficients and
    sampled bilinearly on the unpadded half plane as
    :func:`~cryoclass.numerics.transforms.rotate_smooth` does. Batches of rotations are
    bounded by :data:`CLASS_FRAME_BATCH`.

    Parameters
    ----------
    num_bins : complex (2 * K * n_psi, M)
    den_bins : real (2 * K * n_psi, M)
    index : int (M,) flat half-plane index of each coefficient in the n-box.
    ky, kx : (M,) integer frequencies of the coefficients.
    psi_rad : (n_psi,)

    Returns
    -------
    num : complex128 (2, K, M), den : float64 (2, K, M)
    """
    xp = array_namespace(num_bins)
    n_psi = len(psi_rad)
    hk = num_bins.shape[0] // n_psi
    m = num_bins.shape[1]
    nb = num_bins.reshape(hk, n_psi, m)
    db = den_bins.reshape(hk, n_psi, m)
    turns = [xp.asarray(pos) for pos in _turn_maps(ky, kx, n_psi, turns_fit(n, pad))]
    d = len(turns)
    n_g = n_psi // d
    used = to_host((db != 0).any(axis=2).any(axis=0)).reshape(d, n_g).any(axis=0)
    groups = np.flatnonzero(used)
    num = xp.zeros((hk, m), dtype=np.complex128)
    den = xp.zeros((hk, m), dtype=np.float64)
    if groups.size == 0:
        return num.reshape(2, hk // 2, m), den.reshape(2, hk // 2, m)
    # the d bins of a group, turned back onto the group's first rotation and added
    nbg = nb.reshape(hk, d, n_g, m)
    dbg = db.reshape(hk, d, n_g, m)
    angles = -np.asarray(psi_rad, dtype=np.float64)[groups]
    plan_num = interpolation_plan(ky, kx, angles, pad, pad * n, xp)
    plan_den = interpolation_plan(ky, kx, angles, 1, n, xp)
    per_group = hk * max(4 * m, pad * n * (pad * n // 2 + 1))
    step = max(1, CLASS_FRAME_BATCH // per_group)
    for a0 in range(0, groups.size, step):
        gs = groups[a0:a0 + step]
        sel = xp.asarray(gs)
        nj = int(gs.size)
        part = slice(a0, a0 + nj)
        # numerator: the d turns are summed as pixel permutations inside the padded box
        grid = scatter_half_plane(nbg[:, :, sel].reshape(-1, m), index, n)
        imgs = to_real(grid, n).reshape(hk, d, nj, n, n)
        padded = padded_transform(xp.moveaxis(imgs, 1, 2).reshape(hk * nj, d, n, n), pad,
                                  turns=d)
        num += _sample_each(padded.reshape(hk, nj, -1), *(a[part] for a in plan_num))
        # denominator (real and even): the turns are index permutations of the coefficients
        cd = xp.zeros((hk, nj, m), dtype=db.dtype)
        for r, pos in enumerate(turns):
            cd += dbg[:, r][:, sel][..., pos]
        dgrid = scatter_half_plane(cd.reshape(hk * nj, m), index, n)
        den += _sample_each(dgrid.reshape(hk, nj, -1), *(a[part] for a in plan_den[:2]))
    den = xp.maximum(den, 0.0)
    return num.reshape(2, hk // 2, m), den.reshape(2, hk // 2, m)


def _turn_maps(ky, kx, n_psi: int, allowed: bool = True) -> list:
    """Exact turns of a coefficient set by ``360 r / d`` degrees, r = 0 .. d-1.

    d = 4 for a multiple of 4 rotations, 2 for another even number, 1 otherwise (or when
    not ``allowed``, or when the set is not closed under the turn). Entry r holds, for
    each coefficient u, the position of ``R(360 r / d) u`` in the set, or of its
    Hermitian mirror ``-R u`` when ``R u`` itself is not stored (for even data, such as
    CTF^2 sums, the same value).
    """
    ky = np.rint(np.asarray(to_host(ky), dtype=np.float64)).astype(np.int64)
    kx = np.rint(np.asarray(to_host(kx), dtype=np.float64)).astype(np.int64)
    identity = [np.arange(ky.size)]
    d = 4 if n_psi % 4 == 0 else 2 if n_psi % 2 == 0 else 1
    if not allowed or d == 1:
        return identity
    r = int(max(np.abs(ky).max(initial=0), np.abs(kx).max(initial=0)))
    table = np.full((2 * r + 1, 2 * r + 1), -1, dtype=np.int64)
    table[ky + r, kx + r] = np.arange(ky.size)
    maps = []
    for t in range(d):
        x, y = kx, ky
        for _ in range(t * 4 // d):  # quarter turns: R(90 deg) (x, y) = (-y, x)
            x, y = -y, x
        pos = table[y + r, x + r]
        mirror = pos < 0
        pos[mirror] = table[-y[mirror] + r, -x[mirror] + r]
        if (pos < 0).any():
            return identity
        maps.append(pos)
    return maps


def _sample_each(flat, idx, wgt, conj=None):
    """Sum over rotations j of the bilinear samples of ``flat[:, j]`` at rotation j's plan.

    Parameters
    ----------
    flat : (B, n_rot, Q) half planes, one per bin and rotation
    idx, wgt, conj : (n_rot, M, 4) :func:`interpolation_plan` of each rotation

    Returns
    -------
    (B, M) in float64 / complex128
    """
    xp = array_namespace(flat)
    q = flat.shape[2]
    gidx = idx + (xp.arange(idx.shape[0]) * q)[:, None, None]
    v = flat.reshape(flat.shape[0], -1)[:, gidx]  # (B, n_rot, M, 4)
    if conj is not None:
        v = xp.where(conj[None], xp.conj(v), v)
    return (v * wgt[None]).sum(axis=3).sum(axis=1)


def shell_sums(values, shell, n_shells: int):
    """Sum (..., M) values into shells: (..., n_shells)."""
    xp = array_namespace(values)
    lead = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])
    out = xp.zeros((flat.shape[0], n_shells), dtype=np.float64)
    for r in range(flat.shape[0]):
        out[r] = xp.bincount(shell, weights=flat[r].astype(np.float64), minlength=n_shells)[
            :n_shells]
    return out.reshape(lead + (n_shells,))


def frc(a, b, shell, weight, n_shells: int):
    """Fourier ring correlation of (K, M) coefficient sets per shell: (K, n_shells)."""
    xp = array_namespace(a)
    cross = shell_sums((a * xp.conj(b)).real * weight, shell, n_shells)
    pa = shell_sums((a.real**2 + a.imag**2) * weight, shell, n_shells)
    pb = shell_sums((b.real**2 + b.imag**2) * weight, shell, n_shells)
    denom = xp.sqrt(pa * pb)
    return xp.where(denom > 0, cross / xp.where(denom > 0, denom, 1.0), 0.0)


def frc_resolution(curve, shell_res_A, threshold: float = 0.5):
    """Resolution (Å) where each FRC curve (K, n_shells) drops below ``threshold`` to stay.

    Shell 0 is skipped. The crossing is the first shell j below the threshold whose next
    shell is below too (a single low shell, common at the few-coefficient lowest shells,
    is not a crossing), linearly interpolated between shells j-1 and j; the last shell's
    resolution if the curve never drops; ``inf`` if shells 1 and 2 are both below.
    """
    c = np.asarray(curve)
    res = np.asarray(shell_res_A, dtype=np.float64)
    out = np.full(c.shape[0], np.inf)
    for k in range(c.shape[0]):
        low = c[k, 1:] < threshold
        stay = low & np.append(low[1:], True)  # below here and at the next shell
        below = np.nonzero(stay)[0]
        if below.size == 0:
            out[k] = res[-1]
            continue
        j = below[0] + 1
        if j == 1:
            continue
        c0, c1 = c[k, j - 1], c[k, j]
        f = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
        freq = (1.0 / res[j - 1]) * (1 - f) + (1.0 / res[j]) * f
        out[k] = 1.0 / freq
    return out


def class_averages(num, den, shell, weight, n_shells: int, *, frc_regularization: bool = True,
                   T: float = 2.0, eps: float = 1e-3):
    """Wiener-regularized class averages and half-set FRCs.

    Parameters
    ----------
    num : complex (2, K, M), den : real (2, K, M)
    shell : int (M,), weight : real (M,) Hermitian weights.

    Returns
    -------
    avg : complex (K, M), frc_curve : float (K, n_shells), ssnr : float (K, n_shells)
    """
    xp = array_namespace(num)
    tiny = 1e-30
    halves = num / xp.maximum(den, tiny)
    halves = xp.where(den > tiny, halves, 0)
    curve = frc(halves[0], halves[1], shell, weight, n_shells)
    n_tot = num[0] + num[1]
    d_tot = den[0] + den[1]
    count = xp.bincount(shell, minlength=n_shells)[:n_shells].astype(np.float64)
    dbar = shell_sums(d_tot, shell, n_shells) / xp.maximum(count, 1.0)  # (K, n_shells)
    if frc_regularization:
        f = xp.clip(curve, 1e-3, 0.999)
        ssnr = 2.0 * f / (1.0 - f)
        reg = dbar / (T * ssnr)
    else:
        ssnr = xp.zeros_like(dbar)
        reg = eps * dbar
    reg_q = reg[:, shell]  # (K, M)
    denom = d_tot + reg_q
    avg = xp.where(denom > tiny, n_tot / xp.maximum(denom, tiny), 0)
    return avg, curve, ssnr
