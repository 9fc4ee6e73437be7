r"""Contrast transfer function (RELION convention).

.. math::

    \chi(\mathbf{s}) = \pi\lambda\,\Delta z(\alpha)\,s^2 - \tfrac{\pi}{2} C_s \lambda^3 s^4
                      + \varphi + \arctan\frac{Q}{\sqrt{1 - Q^2}}

    \mathrm{CTF}(\mathbf{s}) = \sin\chi(\mathbf{s}) \; e^{-B s^2 / 4}

with :math:`\Delta z(\alpha) = \tfrac{U+V}{2} + \tfrac{U-V}{2}\cos 2(\alpha - \alpha_{ast})`,
:math:`\alpha` the angle of the frequency vector from the image x axis, U/V the defocus
(Å, positive underfocus), :math:`\lambda` the relativistic electron wavelength (Å),
:math:`C_s` in Å, :math:`\varphi` the phase shift and Q the amplitude contrast. The CTF is
positive at zero frequency (``sin(arctan(Q/sqrt(1-Q^2))) = Q``), as in RELION.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from cryoclass.numerics.fourier import freq_indices


def electron_wavelength_A(voltage_kv):
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2642598 / np.sqrt(v * (1.0 + 0.9784756e-6 * v))


def ctf_values(
    freq_y_invA,
    freq_x_invA,
    defocus_u_A,
    defocus_v_A,
    defocus_angle_rad,
    voltage_kv,
    cs_mm,
    amplitude_contrast,
    phase_shift_rad=0.0,
    bfactor_A2=0.0,
    *,
    phase_flip: bool = False,
    xp: ModuleType = np,
    dtype=np.float32,
):
    """CTF of P particles at M frequencies.

    Parameters
    ----------
    freq_y_invA, freq_x_invA : array (M,)
        Frequency components in 1/Å.
    defocus_u_A, ... bfactor_A2 : scalars or arrays (P,)
        Per-particle CTF parameters (units in the names).
    phase_flip : bool
        Return ``sign(CTF)`` (phase-flip-only correction), without the B-factor envelope.

    Returns
    -------
    array (P, M)
    """
    fy = xp.asarray(freq_y_invA, dtype=np.float64)[None, :]
    fx = xp.asarray(freq_x_invA, dtype=np.float64)[None, :]

    def col(v):
        return xp.asarray(np.atleast_1d(np.asarray(v, dtype=np.float64)))[:, None]

    du, dv, ang = col(defocus_u_A), col(defocus_v_A), col(defocus_angle_rad)
    lam = col(electron_wavelength_A(voltage_kv))
    cs_A = col(cs_mm) * 1e7
    q = xp.clip(col(amplitude_contrast), 0.0, 1.0)
    phi = col(phase_shift_rad)
    bfac = col(bfactor_A2)
    s2 = fx**2 + fy**2
    alpha = xp.arctan2(fy, fx)
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * xp.cos(2.0 * (alpha - ang))
    with np.errstate(divide="ignore"):
        q_phase = xp.arctan2(q, xp.sqrt(xp.clip(1.0 - q * q, 0.0, None)))
    chi = np.pi * lam * dz * s2 - 0.5 * np.pi * cs_A * lam**3 * s2**2 + phi + q_phase
    out = xp.sin(chi)
    if phase_flip:  # signs only: no envelope (RELION's phase-flip CTF is +-1)
        out = xp.where(out >= 0, 1.0, -1.0)
    else:
        out = out * xp.exp(-0.25 * bfac * s2)
    return out.astype(dtype)


def ctf_2d(n: int, pixel_size_A: float, *params, xp: ModuleType = np, **kw):
    """CTF on the rfft half-plane grid of box ``n``: shape (P, n, n // 2 + 1).

    ``params`` and keywords are those of :func:`ctf_values` after the frequencies.
    """
    ky, kx = freq_indices(n, np)
    fy = (ky / (n * pixel_size_A)).ravel()
    fx = (kx / (n * pixel_size_A)).ravel()
    vals = ctf_values(fy, fx, *params, xp=xp, **kw)
    return vals.reshape(vals.shape[0], n, n // 2 + 1)
