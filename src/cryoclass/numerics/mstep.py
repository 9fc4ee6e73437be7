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

from cryoclass.backend import array_namespace
from cryoclass.numerics.fourier import to_real
from cryoclass.numerics.transforms import (
    apply_plan,
    interpolation_plan,
    padded_transform,
    rotate_smooth,
)


def scatter_half_plane(values, index, n: int):
    """Place coefficients given at flat half-plane ``index`` into (B, n, n//2+1) grids."""
    xp = array_namespace(values)
    out = xp.zeros((values.shape[0], n * (n // 2 + 1)), dtype=values.dtype)
    out[:, index] = values
    return out.reshape(values.shape[0], n, n // 2 + 1)


def bins_to_class_frame(num_bins, den_bins, n: int, index, ky, kx, psi_rad, pad: int):
    """Rotate particle-frame bins back into the class frame and sum over psi.

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
    num = xp.zeros((hk, m), dtype=np.complex128)
    den = xp.zeros((hk, m), dtype=np.float64)
    for j in range(n_psi):
        if not bool((db[:, j] != 0).any()):
            continue
        grid = scatter_half_plane(nb[:, j], index, n)
        img = to_real(grid, n)
        plan = interpolation_plan(ky, kx, np.array([-psi_rad[j]]), pad, pad * n, xp)
        num += apply_plan(padded_transform(img, pad), plan)[:, 0]
        dgrid = scatter_half_plane(db[:, j], index, n)
        den += rotate_smooth(dgrid, n, ky, kx, np.array([-psi_rad[j]]))[:, 0]
    den = xp.maximum(den, 0.0)
    return num.reshape(2, hk // 2, m), den.reshape(2, hk // 2, m)


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
