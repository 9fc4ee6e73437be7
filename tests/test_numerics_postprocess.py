"""Real-space post-processing of class averages, masks, and duplicate-pick detection."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from cryoclass.backend import cupy_available
from cryoclass.numerics.duplicates import find_duplicates
from cryoclass.numerics.masks import normalize_background, soft_circular_mask
from cryoclass.numerics.postprocess import (
    apply_mask,
    centre_of_mass,
    clamp_solvent,
    filament_angle,
    non_negative,
    recenter,
    verticalize,
)

from conftest import host, rtol_for

DTYPES = [np.float32, np.float64]

# recenter() on CuPy: shift_images() calls np.asarray() on the device array -com
RECENTER_XP = [
    pytest.param("numpy", id="numpy"),
    pytest.param("cupy", id="cupy", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not cupy_available(), reason="no CUDA device for CuPy")]),
]


def coords(n):
    c = np.arange(n, dtype=np.float64) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    return y, x


def gaussian(n, sx, sy, angle=0.0, centre=(0.0, 0.0)):
    """Gaussian with widths (sx, sy) along its own axes, rotated by ``angle``
    (I(R(-angle) r), so its y axis points along R(angle) (0, 1)), centred at (x, y)."""
    y, x = coords(n)
    x, y = x - centre[0], y - centre[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * x + sa * y, -sa * x + ca * y
    return np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


# ---------------------------------------------------------------- masks


def mask_reference(n, r_in, r_out):
    y, x = coords(n)
    r = np.hypot(x, y)
    m = np.zeros((n, n))
    m[r <= r_in] = 1.0
    edge = (r > r_in) & (r < r_out)
    m[edge] = 0.5 * (1 + np.cos(np.pi * (r[edge] - r_in) / (r_out - r_in)))
    return m


@pytest.mark.parametrize("n", [32, 33])
@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_mask_and_apply_mask(xp, n, dtype):
    ref = mask_reference(n, 8.0, 13.0)
    m = host(soft_circular_mask(n, 8.0, 13.0, xp, dtype))
    assert m.dtype == dtype
    assert_allclose(m, ref, atol=10 * rtol_for(dtype))
    assert m[n // 2, n // 2] == 1.0 and m[0, 0] == 0.0
    assert m[n // 2, n // 2 + 8] == 1.0 and m[n // 2, n // 2 + 13] == 0.0
    assert m[n // 2, n // 2 + 10] == pytest.approx(0.5 * (1 + np.cos(np.pi * 2 / 5)), abs=1e-6)
    rng = np.random.default_rng(0)
    classes = rng.standard_normal((2, n, n)).astype(dtype)
    out = host(apply_mask(xp.asarray(classes), 8.0, 13.0))
    assert out.dtype == dtype
    assert_allclose(out, classes * ref[None], atol=10 * rtol_for(dtype))


def test_hard_mask_when_radii_equal():
    m = soft_circular_mask(21, 6.0, 6.0, dtype=np.float64)
    y, x = coords(21)
    assert_allclose(m, (np.hypot(x, y) <= 6.0).astype(float))


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_background(xp, dtype):
    n = 40
    rng = np.random.default_rng(1)
    imgs = 3.0 + 2.0 * rng.standard_normal((3, n, n))
    imgs += 50.0 * gaussian(n, 4, 4)[None]  # signal inside the radius
    imgs[2] = 7.0  # constant image: only centred
    out = host(normalize_background(xp.asarray(imgs.astype(dtype)), 15.0))
    assert out.dtype == dtype
    y, x = coords(n)
    outside = np.hypot(x, y) > 15.0
    bg = out[:2, outside].astype(np.float64)
    assert_allclose(bg.mean(axis=1), 0.0, atol=20 * rtol_for(dtype) * 10)
    assert_allclose(bg.std(axis=1), 1.0, rtol=20 * rtol_for(dtype))
    assert_allclose(out[2], 0.0, atol=1e-5)


# ---------------------------------------------------------------- re-centering


@pytest.mark.parametrize("xp", RECENTER_XP, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_recenter_integer_offset(xp, dtype):
    n = 48
    t = (5.0, -3.0)  # (x, y) px
    cls = np.stack([gaussian(n, 3.0, 2.0, 0.0, t), gaussian(n, 2.5, 2.5, 0.0, (-4.0, 7.0))])
    out, com = recenter(xp.asarray(cls.astype(dtype)))
    com, out = host(com), host(out)
    assert com.shape == (2, 2)
    assert_allclose(com, [t, (-4.0, 7.0)], atol=1e-9 if dtype == np.float64 else 1e-5)
    assert out.dtype == dtype
    # periodic shift: the tail wrapped in from beyond the box edge is ~1e-9
    assert_allclose(out[0], gaussian(n, 3.0, 2.0), atol=1e-8 + 100 * rtol_for(dtype))
    assert_allclose(host(centre_of_mass(xp.asarray(out))), 0.0, atol=1e-4)


def test_recenter_subpixel_offset():
    n = 48
    t = (3.4, -2.7)
    cls = gaussian(n, 3.0, 2.0, 0.4, t)[None]
    out, com = recenter(cls)
    assert_allclose(com[0], t, atol=0.05)  # thresholding at 0.2 max: nearly symmetric
    assert_allclose(centre_of_mass(out)[0], 0.0, atol=0.05)
    assert_allclose(out[0], gaussian(n, 3.0, 2.0, 0.4, (t[0] - com[0, 0], t[1] - com[0, 1])),
                    atol=1e-6)


def test_centre_of_mass_variants():
    n = 32
    cls = np.zeros((3, n, n))
    cls[0, n // 2 + 2, n // 2 - 6] = 1.0  # a point at (x, y) = (-6, 2)
    cls[1] = -1.0  # nothing positive: no shift
    cls[2, n // 2, n // 2 + 4] = 1.0  # two points, different weights
    cls[2, n // 2, n // 2 - 4] = 0.5
    com = centre_of_mass(cls)
    assert_allclose(com[0], [-6.0, 2.0])
    assert_allclose(com[1], [0.0, 0.0])
    assert_allclose(com[2], [(4 - 0.5 * 4) / 1.5, 0.0])
    assert_allclose(centre_of_mass(cls[2:], binary=True)[0], [0.0, 0.0])
    assert_allclose(centre_of_mass(cls[2:], threshold=0.6)[0], [4.0, 0.0])


# ---------------------------------------------------------------- filaments


@pytest.mark.parametrize("alpha", [0.0, 0.3, -0.6, 1.2, -1.45])
def test_filament_angle_of_tilted_rod(alpha):
    """A rod along R(alpha) (0, 1) (the vertical rod rotated by alpha) has angle alpha
    (to 5 mrad: thresholding a 1.5 px wide rod on the pixel grid biases the moments)."""
    n = 64
    rod = gaussian(n, 1.5, 12.0, alpha)
    got = filament_angle(rod[None])
    assert got.shape == (1,)
    assert got[0] == pytest.approx(alpha, abs=5e-3)
    # a rod tilted by alpha + pi is the same rod
    assert filament_angle(gaussian(n, 1.5, 12.0, alpha + np.pi)[None])[0] == pytest.approx(
        alpha, abs=5e-3)


def test_filament_angle_of_empty_class_is_zero():
    assert_allclose(filament_angle(np.zeros((2, 16, 16))), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_verticalize(xp, dtype):
    n = 64
    alphas = [0.5, -1.0]
    cls = np.stack([gaussian(n, 1.5, 12.0, a) for a in alphas]).astype(dtype)
    out, alpha = verticalize(xp.asarray(cls))
    out, alpha = host(out), host(alpha)
    assert out.dtype == dtype
    assert_allclose(alpha, alphas, atol=5e-3)
    assert_allclose(filament_angle(out), 0.0, atol=1e-2)
    vertical = gaussian(n, 1.5, 12.0)
    for k in range(2):
        assert np.linalg.norm(out[k] - vertical) / np.linalg.norm(vertical) < 0.03


# ---------------------------------------------------------------- positivity / solvent


def test_non_negative(xp):
    a = np.array([[[-1.0, 0.0], [2.0, -0.5]]])
    assert_allclose(host(non_negative(xp.asarray(a))), [[[0.0, 0.0], [2.0, 0.0]]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_clamp_solvent(xp, dtype):
    n = 48
    y, x = coords(n)
    r = np.hypot(x, y)
    inner = 5.0 * gaussian(n, 4.0, 4.0, 0.0, (2.0, -1.0))
    junk = np.where(r > 20.0, 3.0, 0.0)  # solvent / corners
    # class 0: blob + solvent junk; class 1: also a sharp negative dip, which must be clipped
    cls = np.stack([inner + junk, inner + junk - 8.0 * (r < 3)]).astype(dtype)
    out = host(clamp_solvent(xp.asarray(cls), 15.0, 20.0, smooth_sigma_px=1.0))
    assert out.dtype == dtype
    assert out.min() >= 0.0
    assert np.all(out[1][r < 2] == 0.0)
    corners = r > 24.0
    # (a 1 px Gaussian is not quite band-limited on the grid: ringing ~1e-5 of the peak)
    assert np.abs(out[0][corners]).max() < 1e-4 * out.max()
    # away from the dip and the edge: Gaussian (4 px) smoothed by 1 px = Gaussian (sqrt 17)
    smoothed = 5.0 * (16 / 17) * gaussian(n, 17**0.5, 17**0.5, 0.0, (2.0, -1.0))
    ring = (r > 8) & (r < 14)
    assert_allclose(out[0][ring], smoothed[ring], atol=1e-5 + 50 * rtol_for(dtype))


# ---------------------------------------------------------------- duplicates


def test_duplicates_pair_lower_score_rejected():
    rej = find_duplicates(["m1", "m1"], [100.0, 104.0], [50.0, 53.0], [0.9, 0.4], 10.0)
    assert rej.tolist() == [False, True]
    rej = find_duplicates(["m1", "m1"], [100.0, 104.0], [50.0, 53.0], [0.2, 0.4], 10.0)
    assert rej.tolist() == [True, False]
    # 5 px apart is fine with a 4 px minimum separation
    rej = find_duplicates(["m1", "m1"], [100.0, 104.0], [50.0, 53.0], [0.2, 0.4], 4.0)
    assert rej.tolist() == [False, False]


def test_duplicates_never_across_micrographs():
    mic = np.array(["a", "b", "a", "c"])
    x = np.array([10.0, 10.0, 200.0, 11.0])
    y = np.array([10.0, 10.0, 10.0, 10.0])
    assert not find_duplicates(mic, x, y, [1.0, 2.0, 3.0, 4.0], 20.0).any()


def test_duplicates_chain_greedy_best_first():
    # A - B - C in a line, 8 px apart: A-B and B-C pair, A-C (16 px) does not.
    x = np.array([0.0, 8.0, 16.0])
    y = np.zeros(3)
    mic = ["m"] * 3
    # best in the middle: it removes both neighbours
    assert find_duplicates(mic, x, y, [0.5, 0.9, 0.7], 10.0).tolist() == [True, False, True]
    # best at one end: it removes B; C then has no surviving neighbour and is kept
    assert find_duplicates(mic, x, y, [0.9, 0.7, 0.5], 10.0).tolist() == [False, True, False]
    assert find_duplicates(mic, x, y, [0.5, 0.7, 0.9], 10.0).tolist() == [False, True, False]


def test_duplicates_cluster_keeps_only_the_best():
    rng = np.random.default_rng(3)
    n = 6
    x = 500 + rng.uniform(-2, 2, n)
    y = 300 + rng.uniform(-2, 2, n)
    score = rng.uniform(0, 1, n)
    mic = np.full(n, 7)  # integer micrograph ids
    rej = find_duplicates(mic, x, y, score, 10.0)
    assert rej.sum() == n - 1 and not rej[np.argmax(score)]


def test_duplicates_loop_reference():
    """Greedy best-first against a direct O(N^2) loop on random picks over 3 micrographs."""
    rng = np.random.default_rng(4)
    n = 120
    mic = rng.integers(0, 3, n)
    x = rng.uniform(0, 200, n)
    y = rng.uniform(0, 200, n)
    score = rng.uniform(0, 1, n)
    d = 12.0
    kept: list[int] = []
    ref = np.zeros(n, bool)
    for i in np.argsort(-score, kind="stable"):
        if any(mic[j] == mic[i] and np.hypot(x[i] - x[j], y[i] - y[j]) < d for j in kept):
            ref[i] = True
        else:
            kept.append(i)
    assert ref.any()
    assert_allclose(find_duplicates(mic, x, y, score, d), ref)
