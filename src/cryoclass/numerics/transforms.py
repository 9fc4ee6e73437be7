r"""In-plane rotations and translations in Fourier space, and the pose grids.

Conventions (see ``docs/algorithm.md``)
---------------------------------------
Pixel coordinates are ``r = (x, y)`` = (column, row) offsets from the centre pixel.
``R(a) = [[cos a, -sin a], [sin a, cos a]]`` acts on ``(x, y)``.

* Rotating an image by ``psi``: ``I_rot(r) = I(R(-psi) r)``; in Fourier space
  ``F_rot(k) = F(R(-psi) k)``.
* Shifting by ``t``: ``I_t(r) = I(r - t)``; ``F_t(k) = F(k) exp(-2 pi i k.t / n)``.

Rotation samples an oversampled transform: the real-space image is divided by the
bilinear kernel's transform ``sinc^2(x / (p n)) sinc^2(y / (p n))`` (gridding
pre-compensation), zero-padded to ``p n`` (``p`` = padding factor), transformed, and the
padded half plane is bilinearly interpolated at ``p R(-psi) k``; Hermitian symmetry
``F(-k) = conj(F(k))`` supplies the points with ``kx < 0``.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from cryoclass.backend import array_namespace
from cryoclass.numerics.fourier import to_fourier, to_real


def psi_grid(step_deg: float) -> np.ndarray:
    """In-plane angles (rad) covering 360 deg with a step no larger than ``step_deg``.

    The number of angles is even, so every second angle forms the coarse grid.
    """
    n = max(2, int(np.ceil(360.0 / step_deg - 1e-9)))
    n += n % 2
    return np.arange(n) * (2.0 * np.pi / n)


def shift_grid(range_px: float, step_px: float) -> np.ndarray:
    """Return translations ``(n_shifts, 2)`` as (x, y) px on a square grid inside a disk.

    The zero shift comes first.
    """
    if range_px <= 0 or step_px <= 0:
        return np.zeros((1, 2))
    k = int(np.floor(range_px / step_px + 1e-9))
    g = np.arange(-k, k + 1) * step_px
    y, x = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel()], axis=1)
    pts = pts[np.hypot(pts[:, 0], pts[:, 1]) <= range_px + 1e-9]
    order = np.argsort(np.hypot(pts[:, 0], pts[:, 1]), kind="stable")
    return pts[order]


def shift_phases(ky, kx, shifts_px, n: int, xp: ModuleType = np, dtype=np.complex64):
    """Phase factors ``exp(-2 pi i (kx tx + ky ty) / n)``: shape (n_shifts, M).

    Parameters
    ----------
    ky, kx : array (M,)
        Integer frequency indices of the coefficients.
    shifts_px : array (n_shifts, 2)
        Translations (x, y) in pixels of the box ``n``.
    """
    t = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    arg = (np.outer(t[:, 0], np.asarray(kx, dtype=np.float64))
           + np.outer(t[:, 1], np.asarray(ky, dtype=np.float64)))
    return xp.asarray(np.exp(-2j * np.pi * arg / n).astype(dtype))


def _gridding_correction(n: int, pad: int, xp: ModuleType):
    c = np.arange(n) - n // 2
    s = np.sinc(c / (pad * n)) ** 2
    return xp.asarray(1.0 / np.outer(s, s))


def turns_fit(n: int, pad: int) -> bool:
    """Whether :func:`padded_transform` can turn ``n``-box images inside its padded box."""
    return pad * n >= n + 2


def padded_transform(images, pad: int, turns: int = 1):
    """Oversampled half-plane transform of real images for interpolation.

    Parameters
    ----------
    images : array (B, n, n) real, or (B, turns, n, n) with ``turns`` > 1
    turns : int, 1, 2 or 4
        With ``turns = d`` > 1, image ``r`` of each row is turned by ``360 r / d`` degrees
        about the centre pixel, exactly (a pixel permutation of the pre-compensated image
        inside the padded box, where nothing wraps) and the d are summed before the one
        transform: the transform of the sum equals the sum of the transforms, each sampled
        at ``R(360 r / d) k`` (bilinear sampling commutes with quarter turns of the
        lattice). Needs :func:`turns_fit`.

    Returns
    -------
    array (B, p n, p n // 2 + 1) complex: transform of the pre-compensated image
    zero-padded to ``p n`` (scaled by ``p**2`` is *not* applied: values match the
    unpadded transform at frequencies ``k = K / p``).
    """
    xp = array_namespace(images)
    n = images.shape[-1]
    big = pad * n
    work = images * _gridding_correction(n, pad, xp).astype(images.dtype)
    o = big // 2 - n // 2
    if turns > 1:
        if not turns_fit(n, pad):
            raise ValueError("turned padded transforms need pad * n >= n + 2")
        # an odd box centred on the centre pixel: np.rot90 turns about that pixel
        odd = xp.zeros(work.shape[:-2] + (n + 1, n + 1), dtype=work.dtype)
        odd[..., :n, :n] = work
        acc = odd[:, 0]
        for r in range(1, turns):
            # I_rot(x, y) = I(R(-a) (x, y)): counter-clockwise in (x right, y down) axes
            acc = acc + xp.rot90(odd[:, r], k=r * 4 // turns, axes=(-2, -1))
        work, n = acc, n + 1
    buf = xp.zeros(work.shape[:-2] + (big, big), dtype=work.dtype)
    buf[..., o:o + n, o:o + n] = work
    return to_fourier(buf)


def interpolation_plan(ky, kx, angles_rad, pad: int, big: int, xp: ModuleType = np):
    """Bilinear gather plan to sample a padded half plane at ``p R(-a) k``.

    Returns
    -------
    idx : int array (n_angles, M, 4)  flat indices into the padded half plane
    wgt : float array (n_angles, M, 4)  bilinear weights
    conj : bool array (n_angles, M, 4)  take the complex conjugate (Hermitian mirror)
    """
    ky = np.asarray(ky, dtype=np.float64)
    kx = np.asarray(kx, dtype=np.float64)
    a = np.asarray(angles_rad, dtype=np.float64)[:, None]
    c, s = np.cos(a), np.sin(a)
    # R(-a) k = (c kx + s ky, -s kx + c ky)
    qx = pad * (c * kx[None] + s * ky[None])
    qy = pad * (-s * kx[None] + c * ky[None])
    x0 = np.floor(qx)
    y0 = np.floor(qy)
    fx = qx - x0
    fy = qy - y0
    ncol = big // 2 + 1
    idx = np.empty(qx.shape + (4,), dtype=np.int64)
    wgt = np.empty(qx.shape + (4,), dtype=np.float64)
    conj = np.empty(qx.shape + (4,), dtype=bool)
    for j, (dy, dx, w) in enumerate(((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                                     (1, 0, fy * (1 - fx)), (1, 1, fy * fx))):
        px = x0 + dx
        py = y0 + dy
        neg = px < 0
        px = np.where(neg, -px, px)
        py = np.where(neg, -py, py)
        row = np.mod(py, big).astype(np.int64)
        col = np.minimum(px, ncol - 1).astype(np.int64)
        idx[..., j] = row * ncol + col
        wgt[..., j] = w
        conj[..., j] = neg
    return xp.asarray(idx), xp.asarray(wgt), xp.asarray(conj)


def apply_plan(padded, plan, batch_angles: int = 8):
    """Sample padded half planes with a plan: (B, P, Q) -> (B, n_angles, M) complex."""
    xp = array_namespace(padded)
    idx, wgt, conj = plan
    flat = padded.reshape(padded.shape[0], -1)
    n_ang, m = idx.shape[0], idx.shape[1]
    out = xp.empty((padded.shape[0], n_ang, m), dtype=padded.dtype)
    rdt = np.float32 if padded.dtype == np.complex64 else np.float64
    for a0 in range(0, n_ang, batch_angles):
        a1 = min(n_ang, a0 + batch_angles)
        v = flat[:, idx[a0:a1]]  # (B, na, M, 4)
        v = xp.where(conj[a0:a1][None], xp.conj(v), v)
        out[:, a0:a1] = (v * wgt[a0:a1][None].astype(rdt)).sum(axis=-1)
    return out


def rotate_coefficients(images, ky, kx, angles_rad, pad: int = 2):
    """Fourier coefficients at ``(ky, kx)`` of images rotated by each angle.

    Parameters
    ----------
    images : array (B, n, n) real
    ky, kx : array (M,) integer frequency indices on the n-box
    angles_rad : array (n_angles,)

    Returns
    -------
    array (B, n_angles, M) complex: ``F_rot(k) = F(R(-a) k)``.
    """
    xp = array_namespace(images)
    n = images.shape[-1]
    padded = padded_transform(images, pad)
    plan = interpolation_plan(ky, kx, angles_rad, pad, pad * n, xp)
    return apply_plan(padded, plan)


def rotate_half_plane(coeffs, n: int, ky, kx, angles_rad, pad: int = 2):
    """Like :func:`rotate_coefficients` for data given as half-plane coefficients."""
    real_dtype = np.float32 if coeffs.dtype == np.complex64 else np.float64
    images = to_real(coeffs, n).astype(real_dtype)
    return rotate_coefficients(images, ky, kx, angles_rad, pad)


def rotate_smooth(values, n: int, ky, kx, angles_rad):
    """Rotate a smooth, even, real Fourier-space function given on coefficients.

    Used for CTF^2 weights: plain bilinear interpolation on the unpadded half plane.

    Parameters
    ----------
    values : array (B, n, n // 2 + 1) real, ``v(-k) = v(k)``
    """
    xp = array_namespace(values)
    plan = interpolation_plan(ky, kx, angles_rad, 1, n, xp)
    idx, wgt, _ = plan
    flat = values.reshape(values.shape[0], -1)
    out = xp.empty((values.shape[0], idx.shape[0], idx.shape[1]), dtype=values.dtype)
    for a in range(idx.shape[0]):
        out[:, a] = (flat[:, idx[a]] * wgt[a][None].astype(values.dtype)).sum(axis=-1)
    return out


def shift_images(images, shifts_px):
    """Shift real images by ``(x, y)`` px each (Fourier phase shift, periodic)."""
    xp = array_namespace(images)
    n = images.shape[-1]
    from cryoclass.numerics.fourier import freq_indices

    ky, kx = freq_indices(n, xp)
    t = xp.asarray(shifts_px, dtype=xp.float64).reshape(-1, 2)
    ph = xp.exp(-2j * np.pi * (t[:, 0, None, None] * kx + t[:, 1, None, None] * ky) / n)
    out = to_real(to_fourier(images) * ph, n)
    return out.astype(images.dtype)


def rotate_images(images, angles_rad, pad: int = 2):
    """Rotate real images (B, n, n) by one angle each (Fourier interpolation)."""
    xp = array_namespace(images)
    n = images.shape[-1]
    from cryoclass.numerics.fourier import freq_indices

    ky, kx = freq_indices(n, np)
    out = xp.empty_like(images)
    ang = np.atleast_1d(np.asarray(angles_rad, dtype=np.float64))
    for b in range(images.shape[0]):
        c = rotate_coefficients(images[b:b + 1], ky.ravel(), kx.ravel(), ang[b:b + 1], pad)
        out[b] = to_real(c.reshape(n, n // 2 + 1), n)
    return out
