"""M-step numerics: back-rotation of particle-frame bins, FRC, FRC-0.5 resolution,
Wiener-regularized class averages."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from cryoclass.numerics.fourier import (
    freq_indices,
    hermitian_weights,
    shell_index,
    to_fourier,
    to_real,
)
from cryoclass.numerics.mstep import (
    bins_to_class_frame,
    class_averages,
    frc,
    frc_resolution,
    scatter_half_plane,
)
from cryoclass.numerics.transforms import (
    apply_plan,
    interpolation_plan,
    padded_transform,
    psi_grid,
    rotate_coefficients,
    rotate_smooth,
)

from conftest import complex_dtype, host, rtol_for

DTYPES = [np.float32, np.float64]
INTERP_RTOL = 0.03  # pad-2 bilinear rotation + gridding factor (see test_numerics_transforms)


def disk(n, r_max=None):
    """Flat half-plane index, ky, kx, shell of the coefficients with |k| <= r_max."""
    ky, kx = freq_indices(n)
    r_max = n // 2 - 1 if r_max is None else r_max
    sel = np.hypot(ky, kx).ravel() <= r_max
    index = np.flatnonzero(sel)
    return index, ky.ravel()[sel], kx.ravel()[sel], shell_index(n).ravel()[sel]


def blob(n, angle=0.0):
    """Compact asymmetric image rotated analytically by ``angle`` (I(R(-angle) r))."""
    c = np.arange(n, dtype=np.float64) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * x + sa * y, -sa * x + ca * y
    return (np.exp(-0.5 * (((u - n / 12) / (n / 20)) ** 2 + ((v + n / 20) / (n / 9)) ** 2))
            + 0.6 * np.exp(-0.5 * ((u + n / 16) ** 2 + (v - n / 11) ** 2) / (n / 24) ** 2))


def rel_l2(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def smooth_even(ky, kx):
    """A positive, even, anisotropic Fourier-space weight (like a CTF^2 sum)."""
    return 1.0 + np.exp(-(kx**2) / 60.0 - (ky**2) / 15.0)


def test_scatter_half_plane():
    n = 8
    index, *_ = disk(n, 2)
    vals = np.arange(2 * index.size, dtype=float).reshape(2, -1)
    grid = scatter_half_plane(vals, index, n)
    assert grid.shape == (2, n, n // 2 + 1)
    assert_allclose(grid.reshape(2, -1)[:, index], vals)
    assert grid.sum() == vals.sum()


# ---------------------------------------------------------------- bins -> class frame


@pytest.mark.parametrize("dtype", DTYPES)
def test_bins_single_psi_zero_unchanged(xp, dtype):
    n = 32
    index, ky, kx, _ = disk(n)
    a = to_fourier(blob(n)).ravel()[index]
    b = to_fourier(blob(n, 0.7)).ravel()[index]
    num_bins = np.stack([a, b]).astype(complex_dtype(dtype))  # (half, K=1, psi=1)
    den_bins = np.stack([smooth_even(ky, kx), 2 * smooth_even(ky, kx)]).astype(dtype)
    num, den = bins_to_class_frame(xp.asarray(num_bins), xp.asarray(den_bins), n,
                                   index, ky, kx, np.array([0.0]), 2)
    num, den = host(num), host(den)
    assert num.shape == den.shape == (2, 1, index.size)
    assert num.dtype == np.complex128 and den.dtype == np.float64
    assert rel_l2(num[0, 0], a) < INTERP_RTOL
    assert rel_l2(num[1, 0], b) < INTERP_RTOL
    assert_allclose(den[:, 0], den_bins, rtol=10 * rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bins_psi_90_rotated_back(xp, dtype):
    """Particle-frame bins of psi = 90 degrees hold R_90 A; back in the class frame: A."""
    n = 32
    index, ky, kx, _ = disk(n)
    a_img = blob(n)
    particle_frame = blob(n, np.pi / 2)
    nb = to_fourier(particle_frame).ravel()[index]
    # den: particle frame d(k) -> class frame d(R(psi) q)
    d_particle = smooth_even(ky, kx)
    num_bins = np.stack([nb, 0.5 * nb]).astype(complex_dtype(dtype))
    den_bins = np.stack([d_particle, d_particle]).astype(dtype)
    num, den = bins_to_class_frame(xp.asarray(num_bins), xp.asarray(den_bins), n,
                                   index, ky, kx, np.array([np.pi / 2]), 2)
    num, den = host(num), host(den)
    a = to_fourier(a_img).ravel()[index]
    assert rel_l2(num[0, 0], a) < INTERP_RTOL
    assert rel_l2(num[1, 0], 0.5 * a) < INTERP_RTOL
    # the wrong direction would give R_180 A: far off
    assert rel_l2(num[0, 0], to_fourier(blob(n, np.pi)).ravel()[index]) > 0.5
    # R(90) (qx, qy) = (-qy, qx)
    assert_allclose(den[0, 0], smooth_even(kx, -ky), rtol=10 * rtol_for(dtype))


@pytest.mark.parametrize("deg", [30.0, 200.0])
def test_bins_inverse_of_rotate_coefficients(deg):
    """Bins made by rotate_coefficients (the E-step's reference rotation) come back to the
    class frame."""
    n = 32
    index, ky, kx, _ = disk(n)
    psi = np.deg2rad(deg)
    img = blob(n)
    bins = rotate_coefficients(img[None], ky, kx, np.array([psi]))[0]  # (1, M)
    num_bins = np.concatenate([bins, bins])
    den_bins = np.ones((2, index.size))
    num, den = bins_to_class_frame(num_bins, den_bins, n, index, ky, kx, np.array([psi]), 2)
    a = to_fourier(img).ravel()[index]
    assert rel_l2(num[0, 0], a) < 2 * INTERP_RTOL
    inner = np.hypot(ky, kx) < n // 2 - 2  # bilinear edge effects at the disk border
    assert_allclose(den[0, 0][inner], 1.0, atol=1e-12)


def test_bins_sum_over_psi_and_classes():
    """Every psi of a grid holds the correspondingly rotated class: the sum is n_psi * A.
    Bins are ordered (half, class, psi); an empty bin adds nothing."""
    n = 32
    index, ky, kx, _ = disk(n)
    psis = psi_grid(90.0)  # 0, 90, 180, 270
    k = 2
    classes = [blob(n), blob(n, 1.0)[::-1].copy()]
    num_bins = np.zeros((2, k, psis.size, index.size), complex)
    den_bins = np.zeros((2, k, psis.size, index.size))
    for h in range(2):
        for c in range(k):
            for j, p in enumerate(psis):
                if h == 1 and j == 3:
                    continue  # empty bin
                num_bins[h, c, j] = rotate_coefficients(classes[c][None], ky, kx,
                                                        np.array([p]))[0, 0]
                den_bins[h, c, j] = 1.0
    num, den = bins_to_class_frame(num_bins.reshape(-1, index.size),
                                   den_bins.reshape(-1, index.size), n, index, ky, kx, psis, 2)
    for c in range(k):
        a = to_fourier(classes[c]).ravel()[index]
        assert rel_l2(num[0, c], 4 * a) < 2 * INTERP_RTOL
        assert rel_l2(num[1, c], 3 * a) < 2 * INTERP_RTOL
    assert_allclose(den[0], 4.0, atol=1e-12)
    assert_allclose(den[1], 3.0, atol=1e-12)


def class_frame_per_rotation(num_bins, den_bins, n, index, ky, kx, psi_rad, pad):
    """Reference: each rotation's bins rotated on their own, from the public primitives."""
    n_psi = len(psi_rad)
    hk = num_bins.shape[0] // n_psi
    nb = num_bins.reshape(hk, n_psi, -1)
    db = den_bins.reshape(hk, n_psi, -1)
    num = np.zeros((hk, index.size), complex)
    den = np.zeros((hk, index.size))
    for j in range(n_psi):
        angle = np.array([-psi_rad[j]])
        img = to_real(scatter_half_plane(nb[:, j], index, n), n)
        num += apply_plan(padded_transform(img, pad),
                          interpolation_plan(ky, kx, angle, pad, pad * n))[:, 0]
        den += rotate_smooth(scatter_half_plane(db[:, j], index, n), n, ky, kx, angle)[:, 0]
    return num.reshape(2, hk // 2, -1), np.maximum(den, 0.0).reshape(2, hk // 2, -1)


@pytest.mark.parametrize("batch", [None, 1])
@pytest.mark.parametrize("step_deg", [20.0, 30.0, 360.0 / 7])
def test_bins_turned_and_batched_match_each_rotation_alone(monkeypatch, batch, step_deg):
    """Summing the bins of rotations a quarter turn (12 rotations) or a half turn (18) apart
    before one interpolation, in batches, some rotations empty, gives float64 agreement
    with rotating each rotation's bins alone (8 rotations: a multiple of 4 as well)."""
    import cryoclass.numerics.mstep as mstep

    if batch is not None:  # one rotation group per batch: the batching's bookkeeping
        monkeypatch.setattr(mstep, "CLASS_FRAME_BATCH", batch)
    n, k = 24, 3
    index, ky, kx, _ = disk(n)
    psis = psi_grid(step_deg)
    rng = np.random.default_rng(4)
    shape = (2, k, psis.size, index.size)
    num_bins = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    # CTF^2 sums are even in q: cos(a . q) with random a per bin
    a = rng.uniform(-0.3, 0.3, size=shape[:3] + (2,))
    den_bins = 1.5 + np.cos(a[..., :1] * ky + a[..., 1:] * kx)
    num_bins[:, :, [1, 6]] = 0.0  # rotations without data are skipped
    den_bins[:, :, [1, 6]] = 0.0
    num_bins[1, 2, 5] = 0.0  # one empty bin of a used rotation
    den_bins[1, 2, 5] = 0.0
    args = (num_bins.reshape(-1, index.size), den_bins.reshape(-1, index.size), n, index,
            ky, kx, psis, 2)
    num, den = bins_to_class_frame(*args)
    ref_num, ref_den = class_frame_per_rotation(*args)
    assert_allclose(num, ref_num, rtol=0, atol=1e-12 * np.abs(ref_num).max())
    assert_allclose(den, ref_den, rtol=1e-12)


def test_turned_padded_transform_is_the_sum_of_turned_transforms():
    """padded_transform(turns=4) of four images = the padded transforms of each, sampled
    with the plan of the angle minus 0, 90, 180 and 270 degrees."""
    n = 16
    index, ky, kx, _ = disk(n)
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(2, 4, n, n))
    turned = padded_transform(imgs, 2, turns=4)
    angle = np.array([0.3])
    got = apply_plan(turned, interpolation_plan(ky, kx, angle, 2, 2 * n))
    want = sum(apply_plan(padded_transform(imgs[:, r], 2),
                          interpolation_plan(ky, kx, angle - r * np.pi / 2, 2, 2 * n))
               for r in range(4))
    assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    with pytest.raises(ValueError):
        padded_transform(imgs, 1, turns=4)


# ---------------------------------------------------------------- FRC


def frc_loop(a, b, shell, weight, n_shells):
    out = np.zeros((a.shape[0], n_shells))
    for k in range(a.shape[0]):
        for s in range(n_shells):
            sel = shell == s
            cross = (weight[sel] * (a[k, sel] * np.conj(b[k, sel])).real).sum()
            pa = (weight[sel] * np.abs(a[k, sel]) ** 2).sum()
            pb = (weight[sel] * np.abs(b[k, sel]) ** 2).sum()
            out[k, s] = cross / np.sqrt(pa * pb) if pa * pb > 0 else 0.0
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_frc(xp, dtype):
    n = 48
    rng = np.random.default_rng(0)
    index, ky, kx, shell = disk(n)
    w = hermitian_weights(n).ravel()[index]
    n_shells = n // 2
    cdt = complex_dtype(dtype)
    a = (rng.standard_normal((2, index.size)) + 1j * rng.standard_normal((2, index.size)))
    b = (rng.standard_normal((2, index.size)) + 1j * rng.standard_normal((2, index.size)))
    args = (xp.asarray(shell), xp.asarray(w), n_shells)
    same = host(frc(xp.asarray(a.astype(cdt)), xp.asarray((3 * a).astype(cdt)), *args))
    assert same.shape == (2, n_shells)
    filled = np.bincount(shell, minlength=n_shells)[:n_shells] > 0
    assert_allclose(same[:, filled], 1.0, rtol=10 * rtol_for(dtype))
    assert_allclose(same[:, ~filled], 0.0)
    anti = host(frc(xp.asarray(a.astype(cdt)), xp.asarray((-a).astype(cdt)), *args))
    assert_allclose(anti[:, filled], -1.0, rtol=10 * rtol_for(dtype))
    noise = host(frc(xp.asarray(a.astype(cdt)), xp.asarray(b.astype(cdt)), *args))
    counts = np.bincount(shell, minlength=n_shells)[:n_shells]
    big = counts >= 30
    assert np.all(np.abs(noise[:, big]) < 5 / np.sqrt(counts[big]))
    assert_allclose(noise, frc_loop(a.astype(cdt), b.astype(cdt), shell, w, n_shells),
                    atol=20 * rtol_for(dtype))


def test_frc_resolution_interpolates():
    n, psize = 64, 1.5
    shells = np.arange(8)
    res = np.full(8, np.inf)
    res[1:] = n * psize / shells[1:]
    curves = np.array([
        [1.0, 0.95, 0.9, 0.7, 0.3, 0.1, 0.05, 0.0],   # crosses between shells 3 and 4
        [1.0, 0.99, 0.9, 0.8, 0.7, 0.6, 0.55, 0.51],  # never drops: last shell
        [1.0, 0.4, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],     # one low shell is not a crossing
        [1.0, 0.4, 0.3, 0.9, 0.9, 0.9, 0.9, 0.9],     # below at shells 1 and 2: inf
        [1.0, 0.9, 0.6, 0.5, 0.45, 0.1, 0.0, 0.0],    # exactly 0.5 at shell 3 is not below
        [0.2, 0.9, 0.8, 0.6, 0.4, 0.1, 0.0, 0.0],     # shell 0 is ignored
    ])
    got = frc_resolution(curves, res)
    # linear in frequency: 0.7 -> 0.3 reaches 0.5 half way between shells 3 and 4
    assert got[0] == pytest.approx(n * psize / 3.5)
    assert got[1] == pytest.approx(res[-1])
    assert got[2] == pytest.approx(res[-1])
    assert got[3] == np.inf
    assert got[4] == pytest.approx(n * psize / 3.0)
    assert got[5] == pytest.approx(n * psize / (3 + 0.1 / 0.2))
    assert frc_resolution(curves[:1], res, threshold=0.143)[0] == pytest.approx(
        n * psize / (4 + (0.3 - 0.143) / (0.3 - 0.1)))


# ---------------------------------------------------------------- class averages


def _averaging_problem(seed, k=2, n=32):
    rng = np.random.default_rng(seed)
    index, ky, kx, shell = disk(n)
    w = hermitian_weights(n).ravel()[index]
    den = rng.uniform(5.0, 10.0, (2, k, index.size))
    return rng, index, shell, w, den, n // 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_class_averages_without_regularization(xp, dtype):
    rng, index, shell, w, den, n_shells = _averaging_problem(1)
    sig = rng.standard_normal((2, index.size)) + 1j * rng.standard_normal((2, index.size))
    num = den * sig[None]  # identical halves: num/den = sig in both
    cdt = complex_dtype(dtype)
    avg, curve, ssnr = class_averages(xp.asarray(num.astype(cdt)), xp.asarray(den.astype(dtype)),
                                      xp.asarray(shell), xp.asarray(w), n_shells,
                                      frc_regularization=False, eps=0.0)
    tol = 20 * rtol_for(dtype)
    assert_allclose(host(avg), (num[0] + num[1]) / (den[0] + den[1]), rtol=tol)
    assert_allclose(host(avg), sig, rtol=tol)
    filled = np.bincount(shell, minlength=n_shells)[:n_shells] > 0
    assert_allclose(host(curve)[:, filled], 1.0, rtol=tol)
    assert_allclose(host(ssnr), 0.0)
    # the default small Tikhonov term: denominator D + 1e-3 * shell-mean(D)
    avg_eps, *_ = class_averages(num, den, shell, w, n_shells, frc_regularization=False)
    d = den[0] + den[1]
    dbar = np.array([[d[c, shell == s].mean() for s in range(n_shells)] for c in range(2)])
    assert_allclose(avg_eps, (num[0] + num[1]) / (d + 1e-3 * dbar[:, shell]), rtol=1e-12)


def test_class_averages_frc_regularization_identical_halves():
    """FRC = 1 (clipped at 0.999): SSNR = 1998, the Wiener term is mean(D)/(T 1998)."""
    rng, index, shell, w, den, n_shells = _averaging_problem(2)
    sig = rng.standard_normal((2, index.size)) + 1j * rng.standard_normal((2, index.size))
    num = den * sig[None]
    avg, curve, ssnr = class_averages(num, den, shell, w, n_shells, T=2.0)
    d = den[0] + den[1]
    dbar = np.array([[d[c, shell == s].mean() for s in range(n_shells)] for c in range(2)])
    ref = (num[0] + num[1]) / (d + dbar[:, shell] / (2.0 * 1998.0))
    assert_allclose(avg, ref, rtol=1e-10)
    assert_allclose(avg, sig, rtol=1e-3)
    assert_allclose(ssnr[:, 1:], 1998.0, rtol=1e-9)


def test_class_averages_shrink_pure_noise():
    """Independent noise halves: FRC ~ 0, SSNR ~ 0, the averages shrink towards 0; a larger
    T (weaker regularization) shrinks less."""
    rng, index, shell, w, den, n_shells = _averaging_problem(3, n=64)
    m = index.size
    noise = rng.standard_normal((2, 2, m)) + 1j * rng.standard_normal((2, 2, m))
    num = den * noise
    plain = (num[0] + num[1]) / (den[0] + den[1])
    avg, curve, ssnr = class_averages(num, den, shell, w, n_shells, T=2.0)
    counts = np.bincount(shell, minlength=n_shells)[:n_shells]
    big = counts >= 30
    assert np.all(np.abs(curve[:, big]) < 5 / np.sqrt(counts[big]))
    # independent reference of the Wiener filter with this FRC
    ref_curve = frc_loop(noise[0], noise[1], shell, w, n_shells)
    assert_allclose(curve, ref_curve, atol=1e-12)
    f = np.clip(ref_curve, 1e-3, 0.999)
    d = den[0] + den[1]
    dbar = np.array([[d[c, shell == s].mean() if counts[s] else 0.0 for s in range(n_shells)]
                     for c in range(2)])
    reg = dbar / (2.0 * 2 * f / (1 - f))
    assert_allclose(avg, (num[0] + num[1]) / (d + reg[:, shell]), rtol=1e-10)
    hi = np.isin(shell, np.flatnonzero(big))
    ratio = np.linalg.norm(avg[:, hi]) / np.linalg.norm(plain[:, hi])
    assert ratio < 0.3
    avg_t, *_ = class_averages(num, den, shell, w, n_shells, T=50.0)
    assert np.linalg.norm(avg_t[:, hi]) > np.linalg.norm(avg[:, hi])


def test_class_averages_empty_bins_are_zero():
    rng, index, shell, w, den, n_shells = _averaging_problem(4)
    den[:, 1] = 0.0
    num = den * (1.0 + 0j)
    avg, curve, _ = class_averages(num, den, shell, w, n_shells)
    assert np.all(np.isfinite(avg)) and np.all(np.isfinite(curve))
    assert_allclose(avg[1], 0.0)
    assert_allclose(curve[1], 0.0)
