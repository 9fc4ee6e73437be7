"""In-plane rotation and translation: analytic images, exact grid operations, identities.

Convention under test: pixel offsets r = (x, y) = (column, row) from the centre pixel,
``I_rot(r) = I(R(-psi) r)`` with ``R(a) = [[cos a, -sin a], [sin a, cos a]]``. With rows
growing downwards that is a *clockwise* turn on screen: a rotation by +90 degrees is
``np.rot90(img, k=-1)`` (about the centre pixel n // 2).

Rotation interpolates a 2x-oversampled transform bilinearly after dividing the image by
``sinc^2(x / 2n) sinc^2(y / 2n)`` (gridding pre-compensation). That correction is exact on
average over sampling positions, not at angles that land on the grid (0, 90, ...): there
the result is the image divided by the correction, about +1% (relative L2) for the compact
test objects used here, and interpolation errors elsewhere are of the same order. The
tolerances below are set by that approximation, not by the dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from cryoclass.numerics.fourier import freq_indices, to_fourier, to_real
from cryoclass.numerics.transforms import (
    psi_grid,
    rotate_coefficients,
    rotate_half_plane,
    rotate_images,
    rotate_smooth,
    shift_grid,
    shift_images,
    shift_phases,
)

from conftest import complex_dtype, host, rtol_for

DTYPES = [np.float32, np.float64]
INTERP_RTOL = 0.025  # relative L2 error of pad-2 bilinear rotation on compact objects


def rot(a):
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def gaussian(n, sx, sy, angle=0.0, centre=(0.0, 0.0)):
    """Anisotropic Gaussian (widths sx, sy along its own axes), rotated by ``angle`` with the
    package convention I_rot(r) = I(R(-angle) r), centred at (x, y) = ``centre``."""
    c = np.arange(n, dtype=np.float64) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    x, y = x - centre[0], y - centre[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * x + sa * y, -sa * x + ca * y  # R(-angle) (x, y)
    return np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


def blob_pair(n, angle=0.0):
    """Asymmetric test object: an elongated off-centre Gaussian plus a small round one,
    rotated as a whole by ``angle`` (analytically)."""
    c1 = rot(angle) @ np.array([n / 13, -n / 21])
    c2 = rot(angle) @ np.array([-n / 16, n / 11])
    return (gaussian(n, n / 20, n / 9, angle, c1)
            + 0.6 * gaussian(n, n / 24, n / 24, angle, c2))


def rel_l2(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def rot90_about_centre(img, n):
    """+90 degrees in the package convention: out[y, x] = img[-x, y] (centred offsets)."""
    out = np.rot90(img, k=-1)  # out[i, j] = img[n - 1 - j, i]
    if n % 2 == 0:  # centre pixel is n/2, not (n - 1)/2: shift columns by one
        out = np.roll(out, 1, axis=-1)
    return out


# ---------------------------------------------------------------- grids


def test_psi_grid():
    g = psi_grid(7.5)
    assert g.size == 48
    assert_allclose(np.diff(g), 2 * np.pi / 48)
    assert g[0] == 0.0
    g = psi_grid(7.0)  # 360 / 7 = 51.4 -> 52 angles, step <= 7 degrees
    assert g.size == 52 and np.rad2deg(g[1]) <= 7.0
    assert psi_grid(400.0).size == 2  # always even: every second angle is the coarse grid
    assert psi_grid(7.3).size % 2 == 0 and np.rad2deg(psi_grid(7.3)[1]) <= 7.3


def test_shift_grid():
    g = shift_grid(2.0, 1.0)
    assert g.shape == (13, 2)  # integer points inside a disk of radius 2
    assert_allclose(g[0], [0, 0])
    assert np.all(np.hypot(g[:, 0], g[:, 1]) <= 2.0 + 1e-12)
    assert np.all(np.diff(np.hypot(g[:, 0], g[:, 1])) >= -1e-12)
    assert len({tuple(p) for p in g}) == 13
    assert_allclose(shift_grid(0.0, 1.0), [[0.0, 0.0]])


# ---------------------------------------------------------------- rotation


@pytest.mark.parametrize("n", [64, 65])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deg", [0.0, 10.0, 33.0, 45.0, 90.0, 137.0, 200.0, -71.0])
def test_rotate_images_matches_analytic_rotation(xp, n, dtype, deg):
    a = np.deg2rad(deg)
    img = blob_pair(n).astype(dtype)
    out = rotate_images(xp.asarray(img[None]), [a])
    assert out.dtype == dtype and out.shape == (1, n, n)
    assert rel_l2(host(out)[0], blob_pair(n, a)) < INTERP_RTOL


@pytest.mark.parametrize("n", [64, 65])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate_90_is_rot90_clockwise_on_screen(xp, n, dtype):
    img = blob_pair(n).astype(dtype)
    out = host(rotate_images(xp.asarray(img[None]), [np.pi / 2]))[0]
    expected = rot90_about_centre(img, n)
    assert rel_l2(out, expected) < INTERP_RTOL
    # the other direction is far off (the object is asymmetric)
    assert rel_l2(out, np.rot90(img, k=1)) > 0.5
    # on-grid angle: the only error is the (rotation-invariant) gridding factor, so a
    # 90 degree turn equals rotating the exactly rot90-ed image by 0
    same = host(rotate_images(xp.asarray(expected[None].copy()), [0.0]))[0]
    assert_allclose(out, same, rtol=0, atol=50 * rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotation_composes(xp, dtype):
    n = 64
    a, b = np.deg2rad(23.0), np.deg2rad(52.0)
    img = xp.asarray(blob_pair(n).astype(dtype)[None])
    two = host(rotate_images(rotate_images(img, [a]), [b]))[0]
    one = host(rotate_images(img, [a + b]))[0]
    assert rel_l2(two, one) < INTERP_RTOL
    assert rel_l2(two, blob_pair(n, a + b)) < 2 * INTERP_RTOL
    # and a full turn in 4 steps of 90 degrees comes back (up to the gridding factor)
    back = img
    for _ in range(4):
        back = rotate_images(back, [np.pi / 2])
    assert rel_l2(host(back)[0], host(img)[0]) < 4 * INTERP_RTOL


def test_rotate_images_one_angle_per_image():
    n = 33
    imgs = np.stack([blob_pair(n), blob_pair(n, 1.0)])
    out = rotate_images(imgs, [0.5, -1.0])
    assert rel_l2(out[0], blob_pair(n, 0.5)) < INTERP_RTOL
    assert rel_l2(out[1], blob_pair(n, 0.0)) < INTERP_RTOL


@pytest.mark.parametrize("n", [32, 33])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate_coefficients_at_zero_reproduces_transform(xp, n, dtype):
    img = blob_pair(n).astype(dtype)
    ky, kx = freq_indices(n)
    c = host(rotate_coefficients(xp.asarray(img[None]), ky.ravel(), kx.ravel(),
                                 np.array([0.0, 2 * np.pi])))
    assert c.shape == (1, 2, ky.size) and c.dtype == complex_dtype(dtype)
    f = to_fourier(img.astype(np.float64)).ravel()
    for j in range(2):  # 0 and a full turn land on the same grid points
        assert rel_l2(c[0, j], f) < INTERP_RTOL
    # exactly the transform of the gridding-pre-compensated image
    g = np.sinc((np.arange(n) - n // 2) / (2 * n)) ** 2
    pre = to_fourier(img / np.outer(g, g)).ravel()
    assert_allclose(c[0, 0], pre, rtol=0, atol=50 * rtol_for(dtype) * np.abs(pre).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate_coefficients_subset_matches_rotate_images(dtype):
    """Coefficients on a subset of frequencies (an alignment band) equal the full rotation's."""
    n = 32
    img = blob_pair(n).astype(dtype)
    ky, kx = freq_indices(n)
    band = (np.hypot(ky, kx) >= 2) & (np.hypot(ky, kx) <= 10)
    angles = np.deg2rad([0.0, 40.0, 300.0])
    c = rotate_coefficients(img[None], ky[band], kx[band], angles)
    for j, a in enumerate(angles):
        full = to_fourier(rotate_images(img[None], [a])[0].astype(np.float64))
        assert_allclose(c[0, j], full[band], rtol=0, atol=20 * rtol_for(dtype) * n * n)
    # rotate_half_plane: same thing from half-plane coefficients
    h = rotate_half_plane(to_fourier(img[None]), n, ky[band], kx[band], angles)
    assert_allclose(h, c, rtol=0, atol=20 * rtol_for(dtype) * n * n)


def test_rotated_coefficients_are_hermitian_consistent():
    """F_rot(-k) = conj(F_rot(k)) (the Hermitian mirror is used for kx < 0 samples)."""
    n = 33
    img = blob_pair(n)
    ky = np.array([3.0, -3.0, 0.0, 0.0, 7.0, -7.0])
    kx = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    c = rotate_coefficients(img[None], ky, kx, np.deg2rad([17.0, 100.0]))[0]
    assert_allclose(c[:, 0], np.conj(c[:, 1]), atol=1e-10)
    assert_allclose(c[:, 4], np.conj(c[:, 5]), atol=1e-10)
    assert_allclose(c[:, 2].imag, 0.0, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate_smooth_even_function(xp, dtype):
    """A radial function is unchanged by rotation; an anisotropic smooth one follows
    F_rot(k) = F(R(-a) k) up to bilinear interpolation error."""
    n = 32
    ky, kx = freq_indices(n)
    radial = np.exp(-(ky**2 + kx**2) / 60.0).astype(dtype)
    angles = np.deg2rad([0.0, 30.0, 90.0])
    out = host(rotate_smooth(xp.asarray(radial[None]), n, ky.ravel(), kx.ravel(), angles))
    assert out.dtype == dtype
    inside = np.hypot(ky, kx).ravel() < n / 2 - 1
    for j in range(3):
        assert_allclose(out[0, j][inside], radial.ravel()[inside], atol=0.01)

    def aniso(qy, qx):
        return np.exp(-(qx**2) / 80.0 - (qy**2) / 20.0)

    a = np.deg2rad(30.0)
    v = aniso(ky, kx).astype(dtype)
    out = host(rotate_smooth(xp.asarray(v[None]), n, ky.ravel(), kx.ravel(), [a]))[0, 0]
    qx = np.cos(a) * kx + np.sin(a) * ky  # R(-a) k
    qy = -np.sin(a) * kx + np.cos(a) * ky
    assert_allclose(out[inside], aniso(qy, qx).ravel()[inside], atol=0.02)


# ---------------------------------------------------------------- translation


@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_shift_is_roll(xp, n, dtype):
    rng = np.random.default_rng(n)
    imgs = rng.standard_normal((3, n, n)).astype(dtype)
    shifts = np.array([[2.0, 0.0], [0.0, -3.0], [-5.0, 4.0]])  # (x, y)
    out = host(shift_images(xp.asarray(imgs), shifts))
    assert out.dtype == dtype
    for b, (tx, ty) in enumerate(shifts):
        # I_t(r) = I(r - t): content moves by +t (x = columns, y = rows)
        expected = np.roll(imgs[b], (int(ty), int(tx)), axis=(0, 1))
        assert_allclose(out[b], expected, rtol=0, atol=100 * rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_subpixel_shift_of_gaussian(xp, dtype):
    n = 48
    t = (2.3, -1.7)
    img = gaussian(n, 3.0, 4.0, 0.4).astype(dtype)
    out = host(shift_images(xp.asarray(img[None]), [t]))[0]
    assert_allclose(out, gaussian(n, 3.0, 4.0, 0.4, centre=t), rtol=0,
                    atol=max(1e-6, 50 * rtol_for(dtype)))


@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shift_phases_match_shift_images(xp, n, dtype):
    rng = np.random.default_rng(7)
    img = gaussian(n, 2.0, 3.0, 0.3) + 0.1 * rng.standard_normal((n, n))
    img = img.astype(dtype)
    ky, kx = freq_indices(n)
    shifts = np.array([[0.0, 0.0], [1.0, -2.0], [0.5, 1.25]])
    ph = host(shift_phases(ky.ravel(), kx.ravel(), shifts, n, xp, complex_dtype(dtype)))
    assert ph.shape == (3, ky.size) and ph.dtype == complex_dtype(dtype)
    t0 = 2 * np.pi * (shifts[:, :1] * kx.ravel() + shifts[:, 1:] * ky.ravel()) / n
    assert_allclose(ph, np.exp(-1j * t0), atol=10 * rtol_for(dtype))
    f = to_fourier(img.astype(np.float64))
    for j, t in enumerate(shifts):
        via_phases = to_real(f * ph[j].reshape(f.shape), n)
        via_images = host(shift_images(xp.asarray(img[None]), [t]))[0]
        assert_allclose(via_phases, via_images, rtol=0, atol=100 * rtol_for(dtype))


def test_rotating_a_shifted_image_shifts_by_the_rotated_vector():
    """R_psi S_c A = S_{R(psi) c} R_psi A: the identity behind the pose update when a class
    is re-centred (particle shift t -> t + R(psi) c, see numerics.postprocess)."""
    n = 64
    img = blob_pair(n)
    c = np.array([5.0, -2.0])
    psi = np.deg2rad(60.0)
    lhs = rotate_images(shift_images(img[None], [c]), [psi])[0]
    rhs = shift_images(rotate_images(img[None], [psi]), [rot(psi) @ c])[0]
    assert rel_l2(lhs, rhs) < INTERP_RTOL
    wrong = shift_images(rotate_images(img[None], [psi]), [rot(-psi) @ c])[0]
    assert rel_l2(lhs, wrong) > 0.3
