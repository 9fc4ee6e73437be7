"""Fourier conventions: centred rfft, Parseval, cropping/padding, working box."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from cryoclass.numerics.fourier import (
    crop_fourier,
    freq_indices,
    hermitian_weights,
    pad_fourier,
    to_fourier,
    to_real,
    working_box,
)

from conftest import complex_dtype, host, rtol_for

DTYPES = [np.float32, np.float64]


def centred_coords(n):
    """(y, x) pixel offsets from the centre pixel (n // 2, n // 2), shape (n, n) each."""
    c = np.arange(n, dtype=np.float64) - n // 2
    return np.meshgrid(c, c, indexing="ij")


def point_reflect(img):
    """img(-r) about the centre pixel, periodic: index n//2 + y -> n//2 - y (mod n)."""
    n = img.shape[-1]
    rev = (2 * (n // 2) - np.arange(n)) % n
    return img[..., rev, :][..., :, rev]


@pytest.mark.parametrize("n", [15, 16, 33, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(xp, n, dtype):
    rng = np.random.default_rng(n)
    img = rng.standard_normal((3, n, n)).astype(dtype)
    f = to_fourier(xp.asarray(img))
    assert f.shape == (3, n, n // 2 + 1)
    back = host(to_real(f, n))
    assert_allclose(back, img, rtol=0, atol=50 * rtol_for(dtype))


@pytest.mark.parametrize("n", [15, 16])
def test_matches_definition(n):
    """F(k) = sum_r img(r) exp(-2 pi i k.r / n) with r measured from the centre pixel."""
    rng = np.random.default_rng(1)
    img = rng.standard_normal((n, n))
    y, x = centred_coords(n)
    ky, kx = freq_indices(n)
    ref = np.exp(-2j * np.pi * (ky.ravel()[:, None] * y.ravel()[None]
                                + kx.ravel()[:, None] * x.ravel()[None]) / n) @ img.ravel()
    assert_allclose(to_fourier(img).ravel(), ref, rtol=0, atol=1e-10 * n * n)


@pytest.mark.parametrize("n", [15, 16, 64, 65])
@pytest.mark.parametrize("dtype", DTYPES)
def test_centred_symmetric_image_has_real_transform(xp, n, dtype):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((n, n))
    sym = (a + point_reflect(a)).astype(dtype)
    f = host(to_fourier(xp.asarray(sym)))
    scale = np.abs(f).max()
    assert_allclose(f.imag, 0.0, atol=20 * rtol_for(dtype) * scale)
    # and a centred anisotropic, tilted Gaussian (point-symmetric in the continuum)
    y, x = centred_coords(n)
    u, v = 0.8 * x + 0.6 * y, -0.6 * x + 0.8 * y
    g = np.exp(-0.5 * ((u / (n / 10)) ** 2 + (v / (n / 16)) ** 2))
    if n % 2 == 0:  # offset -n/2 is its own mirror (mod n): its row/column must be even alone
        g[0, :] = 0
        g[:, 0] = 0
    g = g.astype(dtype)
    fg = host(to_fourier(xp.asarray(g)))
    assert_allclose(fg.imag, 0.0, atol=20 * rtol_for(dtype) * np.abs(fg).max())


@pytest.mark.parametrize("n", [15, 16, 31, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_parseval_with_hermitian_weights(xp, n, dtype):
    rng = np.random.default_rng(3)
    img = rng.standard_normal((2, n, n)).astype(dtype)
    f = host(to_fourier(xp.asarray(img))).astype(np.complex128)
    w = host(hermitian_weights(n, xp))
    lhs = (w * np.abs(f) ** 2).sum(axis=(-2, -1))
    rhs = n * n * (img.astype(np.float64) ** 2).sum(axis=(-2, -1))
    assert_allclose(lhs, rhs, rtol=10 * rtol_for(dtype))


def test_hermitian_weights_values():
    w = hermitian_weights(8)
    assert w.shape == (8, 5)
    assert np.all(w[:, 0] == 1) and np.all(w[:, 4] == 1) and np.all(w[:, 1:4] == 2)
    w = hermitian_weights(7)
    assert w.shape == (7, 4)
    assert np.all(w[:, 0] == 1) and np.all(w[:, 1:] == 2)
    # total weight = number of full-plane coefficients
    for n in (7, 8, 9, 10):
        assert hermitian_weights(n).sum() == n * n


def test_freq_indices():
    ky, kx = freq_indices(6)
    assert ky.shape == kx.shape == (6, 4)
    assert_allclose(ky[:, 0], [0, 1, 2, -3, -2, -1])
    assert_allclose(kx[0], [0, 1, 2, 3])


def _zero_nyquist(c, m):
    """Zero the Nyquist row/column of an even box (they alias +-m/2 and do not survive)."""
    c = c.copy()
    if m % 2 == 0:
        c[..., m // 2, :] = 0
        c[..., :, m // 2] = 0
    return c


@pytest.mark.parametrize("m,n", [(8, 16), (9, 16), (10, 15), (15, 15), (16, 40), (17, 33)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_crop_of_pad_is_identity(xp, m, n, dtype):
    rng = np.random.default_rng(m * n)
    img = rng.standard_normal((2, m, m)).astype(dtype)
    c = _zero_nyquist(host(to_fourier(xp.asarray(img))), m)
    cd = xp.asarray(c)
    padded = pad_fourier(cd, m, n)
    assert padded.shape == (2, n, n // 2 + 1)
    assert padded.dtype == complex_dtype(dtype)
    back = host(crop_fourier(padded, n, m))
    assert_allclose(back, c, rtol=rtol_for(dtype), atol=rtol_for(dtype) * np.abs(c).max())


def test_pad_interpolates_band_limited_image():
    """Zero-padding a band-limited image's transform samples it on a finer grid."""
    m, n = 16, 48
    kset = [(0, 1, 0.7, 0.3), (2, 3, 0.5, -1.0), (-5, 4, 0.25, 2.0), (7, -3, 0.4, 0.1)]

    def img(size, step):
        y, x = centred_coords(size)
        y, x = y * step, x * step
        return sum(a * np.cos(2 * np.pi * (ky * y + kx * x) / m + ph) for ky, kx, a, ph in kset)

    fine = to_real(pad_fourier(to_fourier(img(m, 1.0)), m, n), n)
    assert_allclose(fine, img(n, m / n), atol=1e-12)


@pytest.mark.parametrize("n,m", [(64, 32), (60, 40), (63, 42), (65, 31), (48, 48)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_crop_samples_band_limited_image_on_coarse_grid(xp, n, m, dtype):
    """A sum of plane waves with |ky|, |kx| < m / 2, evaluated at pixel offsets r from the
    centre of an n-box; cropped to m it must equal the same function at r * n / m."""
    waves = [(0, 0, 0.3, 0.0), (1, 0, 1.0, 0.2), (0, 2, 0.7, -0.4), (-3, 5, 0.5, 1.1),
             (4, -6, 0.25, 2.5), (-(m // 2 - 1), m // 2 - 1, 0.2, 0.7)]

    def image(size, step):
        y, x = centred_coords(size)
        y, x = y * step, x * step
        return sum(a * np.cos(2 * np.pi * (ky * y + kx * x) / n + ph)
                   for ky, kx, a, ph in waves)

    big = image(n, 1.0).astype(dtype)
    small = host(to_real(crop_fourier(to_fourier(xp.asarray(big)), n, m), m))
    assert_allclose(small, image(m, n / m), rtol=0, atol=50 * rtol_for(dtype))


def test_crop_and_pad_reject_wrong_sizes():
    c = np.zeros((1, 8, 5), complex)
    with pytest.raises(ValueError):
        crop_fourier(c, 8, 10)
    with pytest.raises(ValueError):
        pad_fourier(c, 8, 6)


@pytest.mark.parametrize("box,psize,res,expected", [
    (256, 1.0, 6.0, 86),     # ceil(2 * 256 / 6) = 86
    (256, 1.0, 7.0, 74),     # ceil(73.14) = 74
    (256, 1.0, 5.0, 104),    # ceil(102.4) = 103 -> even 104
    (255, 1.0, 6.0, 86),     # odd input box
    (256, 1.0, 1.0, 256),    # beyond Nyquist: the full box
    (255, 1.0, 1.0, 254),    # full box rounded down to even
    (64, 1.0, 200.0, 8),     # floor of 8 pixels
])
def test_working_box(box, psize, res, expected):
    m, p = working_box(box, psize, res)
    assert m == expected
    assert m % 2 == 0
    assert p == pytest.approx(psize * box / m)
    if expected not in (8, box - box % 2):
        assert 2 * p <= res + 1e-12  # the cropped Nyquist reaches the requested resolution
        assert 2 * psize * box / (m - 2) > res  # and it is the smallest such even box


def test_working_box_never_exceeds_input_box():
    m, _ = working_box(6, 1.0, 50.0)
    assert m <= 6
