r"""Image formation: exact projections of Gaussian atoms, CTF, coloured noise.

Pure array functions (NumPy), no files.

Projection
----------
An atom of weight :math:`w_a`, width :math:`\sigma_a` at projected position
:math:`(x_a, y_a)` (px, relative to the centre pixel ``(n//2, n//2)``) contributes
:math:`\frac{w_a}{2\pi\sigma_a^2} e^{-((x-x_a)^2 + (y-y_a)^2)/(2\sigma_a^2)}`, which is
separable, so a whole image is one matrix product
``image = (G_y * w) @ G_x.T`` with ``G_y[i, a] = g_a(y_i - y_a)`` of shape (n, atoms).
"""

from __future__ import annotations

import numpy as np

from cryoclass.numerics.ctf import ctf_2d
from cryoclass.numerics.fourier import to_fourier, to_real

#: Images rendered per batched matrix product (bounds the (batch, n, atoms) temporaries).
RENDER_BATCH = 64


def render_atoms(xy_px: np.ndarray, sigma_px: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """Render projected Gaussian atoms.

    Parameters
    ----------
    xy_px : ndarray (n_images, n_atoms, 2)
        Projected atom centres (x, y) in px relative to the centre pixel.
    sigma_px : ndarray (n_atoms,) or (n_images, n_atoms)
        Atom widths in px.
    weight : ndarray (n_atoms,) or (n_images, n_atoms)
        Atom weights.
    n : int
        Box size.

    Returns
    -------
    ndarray (n_images, n, n) float32
    """
    xy_px = np.asarray(xy_px, dtype=np.float32)
    n_img, n_atoms = xy_px.shape[:2]
    sigma = np.broadcast_to(np.asarray(sigma_px, dtype=np.float32), (n_img, n_atoms))
    w = np.broadcast_to(np.asarray(weight, dtype=np.float32), (n_img, n_atoms))
    grid = (np.arange(n, dtype=np.float32) - n // 2)[None, :, None]  # (1, n, 1)
    out = np.empty((n_img, n, n), dtype=np.float32)
    for b0 in range(0, n_img, RENDER_BATCH):
        sl = slice(b0, b0 + RENDER_BATCH)
        s = sigma[sl][:, None, :]  # (b, 1, atoms)
        inv = np.float32(-0.5) / (s * s)
        norm = np.float32(1.0 / np.sqrt(2.0 * np.pi)) / s
        gx = _gauss(grid, xy_px[sl, None, :, 0], inv, norm)  # (b, n, atoms)
        gy = _gauss(grid, xy_px[sl, None, :, 1], inv, norm * w[sl][:, None, :])
        np.matmul(gy, gx.transpose(0, 2, 1), out=out[sl])
    return out


def _gauss(grid, centre, inv, norm):
    """``norm * exp(inv * (grid - centre)**2)`` with in-place passes, (b, n, atoms)."""
    g = grid - centre
    np.square(g, out=g)
    g *= inv
    np.exp(g, out=g)
    g *= norm
    return g


def project(coords_A: np.ndarray, rotation: np.ndarray, shift_px: np.ndarray,
            sigma_A: np.ndarray, weight: np.ndarray, n: int, pixel_size_A: float) -> np.ndarray:
    """Project one phantom under many poses.

    Parameters
    ----------
    coords_A : ndarray (n_atoms, 3)
        Atom centres in Å.
    rotation : ndarray (n_images, 3, 3)
        Full rotations ``Rz(psi) @ R_v`` acting on the atom coordinates.
    shift_px : ndarray (n_images, 2)
        Shifts (x, y) in px added after rotation (``shift_t(I)(r) = I(r - t)``).
    sigma_A, weight : ndarray (n_atoms,)
        Atom widths (Å) and weights.
    n : int
        Box size.
    pixel_size_A : float
        Pixel size in Å.

    Returns
    -------
    ndarray (n_images, n, n) float32
    """
    xy = np.einsum("bij,aj->bai", rotation[:, :2, :], coords_A) / pixel_size_A
    xy += np.asarray(shift_px, dtype=np.float64)[:, None, :]
    return render_atoms(xy, np.asarray(sigma_A) / pixel_size_A, weight, n)


def apply_ctf(images: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    """Multiply ``(P, n, n)`` images by a half-plane CTF ``(P, n, n//2+1)`` in Fourier space."""
    n = images.shape[-1]
    return to_real(to_fourier(images) * ctf, n).astype(np.float32)


def particle_ctf(n: int, pixel_size_A: float, defocus_u_A, defocus_v_A, defocus_angle_deg,
                 voltage_kv: float, cs_mm: float, amplitude_contrast: float) -> np.ndarray:
    """CTF (P, n, n//2+1) of P particles (no phase shift, no B-factor)."""
    return ctf_2d(n, pixel_size_A, defocus_u_A, defocus_v_A, np.deg2rad(defocus_angle_deg),
                  voltage_kv, cs_mm, amplitude_contrast, 0.0, 0.0)


def noise_power(freq_invA, corner_A: float, floor: float):
    r"""Unnormalised noise power :math:`1/(1 + (s\,d_c)^2) + f` at frequency ``s`` (1/Å)."""
    s = np.asarray(freq_invA, dtype=np.float64)
    return 1.0 / (1.0 + (s * corner_A) ** 2) + floor


def noise_filter(n: int, pixel_size_A: float, corner_A: float, floor: float) -> np.ndarray:
    """Amplitude filter (n, n//2+1) turning unit white noise into unit-variance coloured noise.

    The power is normalised so that its mean over the full Fourier plane is one, hence the
    pixel variance of the filtered noise is one (Parseval).
    """
    f = np.fft.fftfreq(n) / pixel_size_A
    full = noise_power(np.hypot(f[:, None], f[None, :]), corner_A, floor)
    fh = np.fft.rfftfreq(n) / pixel_size_A
    half = noise_power(np.hypot(f[:, None], fh[None, :]), corner_A, floor)
    return np.sqrt(half / full.mean()).astype(np.float32)


def colour_noise(white: np.ndarray, filt: np.ndarray) -> np.ndarray:
    """Filter white noise ``(P, n, n)`` with an amplitude filter ``(n, n//2+1)``."""
    n = white.shape[-1]
    return to_real(to_fourier(white) * filt, n).astype(np.float32)
