"""Fourier-space conventions, grids and cropping.

Conventions (used everywhere in cryoclass)
------------------------------------------
* Images are ``(..., n, n)`` arrays, axis -2 is y (rows), axis -1 is x (columns);
  the image centre is pixel ``(n // 2, n // 2)``.
* Fourier coefficients use the real-FFT half plane: ``F = rfft2(ifftshift(img))``,
  shape ``(..., n, n // 2 + 1)``, so phases are relative to the image centre and a
  centred, symmetric image has a real transform.
* Integer frequency indices ``ky = fftfreq(n) * n`` and ``kx = rfftfreq(n) * n``;
  the physical frequency is ``k / (n * pixel_size_A)`` in 1/Å.
* Fourier cropping from box ``n`` to ``m`` keeps ``|ky|, kx < m/2`` and scales by
  ``(m / n)**2`` so that pixel values keep their meaning (a cropped image is the
  band-limited, coarser-sampled version of the original).
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from cryoclass.backend import array_namespace, fft_module, fft_workers


def freq_indices(n: int, xp: ModuleType = np) -> tuple:
    """Integer frequency indices of the rfft half plane.

    Returns
    -------
    ky, kx : arrays of shape (n, n // 2 + 1)
    """
    ky = np.fft.fftfreq(n) * n
    kx = np.fft.rfftfreq(n) * n
    kyg, kxg = np.meshgrid(ky, kx, indexing="ij")
    return xp.asarray(np.round(kyg)), xp.asarray(np.round(kxg))


def radius_grid(n: int, xp: ModuleType = np):
    """Frequency radius in Fourier pixels on the half plane, shape (n, n // 2 + 1)."""
    ky, kx = freq_indices(n, np)
    return xp.asarray(np.sqrt(ky**2 + kx**2))


def shell_index(n: int, xp: ModuleType = np):
    """Resolution shell of each half-plane coefficient: ``round(|k|)``, int64."""
    return xp.asarray(np.rint(np.asarray(radius_grid(n, np))).astype(np.int64))


def hermitian_weights(n: int, xp: ModuleType = np):
    """Weight of each half-plane coefficient in a full-plane sum (2, or 1 on kx=0 / Nyquist).

    For a real image, ``sum over the full plane of g(F)`` with ``g(F(-k)) = g(F(k))``
    equals ``sum(hermitian_weights * g(F_half))``.
    """
    _, kx = freq_indices(n, np)
    w = np.full(kx.shape, 2.0)
    w[kx == 0] = 1.0
    if n % 2 == 0:
        w[kx == n // 2] = 1.0
    return xp.asarray(w)


def to_fourier(images):
    """Centred real FFT of ``(..., n, n)`` real images -> ``(..., n, n//2+1)`` complex."""
    xp = array_namespace(images)
    fft = fft_module(xp)
    shifted = xp.fft.ifftshift(images, axes=(-2, -1))
    if xp is np:
        return fft.rfft2(shifted, workers=fft_workers())
    return fft.rfft2(shifted)


def to_real(coeffs, n: int):
    """Inverse of :func:`to_fourier` for box size ``n``."""
    xp = array_namespace(coeffs)
    fft = fft_module(xp)
    if xp is np:
        img = fft.irfft2(coeffs, s=(n, n), workers=fft_workers())
    else:
        img = fft.irfft2(coeffs, s=(n, n))
    return xp.fft.fftshift(img, axes=(-2, -1))


def _crop_rows(n: int, m: int) -> np.ndarray:
    """Row indices (ky order of an m-box) inside an n-box half plane, for m <= n."""
    ky_m = np.round(np.fft.fftfreq(m) * m).astype(np.int64)
    return np.mod(ky_m, n)


def crop_fourier(coeffs, n: int, m: int):
    """Fourier-crop half-plane coefficients from box ``n`` to box ``m`` (m <= n).

    The Nyquist row/column of an even ``m`` is set to zero (it would alias +-m/2),
    so ``crop(pad(c)) == c`` exactly. Values are scaled by ``(m / n)**2``.
    """
    if m > n:
        raise ValueError(f"crop_fourier: m={m} > n={n}")
    xp = array_namespace(coeffs)
    rows = xp.asarray(_crop_rows(n, m))
    out = xp.take(coeffs, rows, axis=-2)[..., : m // 2 + 1] * ((m / n) ** 2)
    if m % 2 == 0 and m < n:
        out[..., m // 2, :] = 0
        out[..., :, m // 2] = 0
    return out


def pad_fourier(coeffs, m: int, n: int):
    """Zero-pad half-plane coefficients from box ``m`` to box ``n`` (n >= m); inverse of crop."""
    if n < m:
        raise ValueError(f"pad_fourier: n={n} < m={m}")
    xp = array_namespace(coeffs)
    shape = coeffs.shape[:-2] + (n, n // 2 + 1)
    out = xp.zeros(shape, dtype=coeffs.dtype)
    rows = _crop_rows(n, m)
    ncol = m // 2 + 1
    out[..., xp.asarray(rows), :ncol] = coeffs
    if m % 2 == 0 and m < n:  # drop the small box's Nyquist (aliased +-m/2)
        out[..., int(rows[m // 2]), :] = 0
        out[..., :, m // 2] = 0
    return out * ((n / m) ** 2)


def working_box(box_px: int, pixel_size_A: float, max_res_A: float) -> tuple[int, float]:
    """Smallest even box whose Nyquist frequency reaches ``max_res_A``.

    Returns
    -------
    box_px : int
        Fourier-cropped box (even, at most the input box rounded down to even).
    pixel_size_A : float
        Pixel size of the cropped box.
    """
    full = box_px - (box_px % 2)
    m = int(math.ceil(2.0 * pixel_size_A * box_px / max_res_A))
    m += m % 2
    m = min(max(8, m), full)
    return m, pixel_size_A * box_px / m


def resolution_to_radius(res_A: float, box_px: int, pixel_size_A: float) -> float:
    """Fourier radius (in pixels of a box) of a resolution in Å."""
    return box_px * pixel_size_A / res_A


def radius_to_resolution(radius, box_px: int, pixel_size_A: float):
    """Resolution in Å of a Fourier radius (in pixels of a box); inf at radius 0."""
    r = np.asarray(radius, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return box_px * pixel_size_A / r
