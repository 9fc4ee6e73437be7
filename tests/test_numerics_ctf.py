"""CTF against a scalar float64 transcription of RELION's formula, and analytic values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from cryoclass.numerics.ctf import ctf_2d, ctf_values, electron_wavelength_A
from cryoclass.numerics.fourier import freq_indices

from conftest import host, rtol_for

DTYPES = [np.float32, np.float64]


def relion_wavelength_A(voltage_kv):
    """RELION's ``12.2643 / sqrt(V (1 + 0.978466e-6 V))`` (V in volts)."""
    v = voltage_kv * 1e3
    return 12.2643 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


def ctf_scalar(fy, fx, du, dv, ang, kv, cs_mm, q, phase=0.0, bfac=0.0, lam=None):
    """One CTF value, written out term by term (float64, no vectorization)."""
    lam = relion_wavelength_A(kv) if lam is None else lam
    s2 = fx * fx + fy * fy
    alpha = math.atan2(fy, fx)  # angle of the frequency from the x axis
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * math.cos(2.0 * (alpha - ang))
    cs_A = cs_mm * 1e7
    chi = (math.pi * lam * dz * s2 - 0.5 * math.pi * cs_A * lam**3 * s2 * s2 + phase
           + math.atan(q / math.sqrt(1.0 - q * q)))
    return math.sin(chi) * math.exp(-bfac * s2 / 4.0)


PARTICLES = [  # du, dv, angle, kV, Cs, Q, phase, B
    (15000.0, 14000.0, 0.3, 300.0, 2.7, 0.1, 0.0, 0.0),
    (22000.0, 25000.0, -1.2, 200.0, 2.0, 0.07, 0.0, 50.0),
    (8000.0, 8000.0, 0.0, 300.0, 0.01, 0.1, 0.5 * math.pi, 0.0),
    (30000.0, 28000.0, 2.5, 120.0, 1.2, 0.15, 0.2, 120.0),
]


def _freqs(rng, m=200, smax=0.3):
    s = smax * np.sqrt(rng.uniform(0, 1, m))
    a = rng.uniform(-np.pi, np.pi, m)
    return s * np.sin(a), s * np.cos(a)


@pytest.mark.parametrize("kv", [80.0, 120.0, 200.0, 300.0])
def test_wavelength(kv):
    # RELION's constants (12.2643, 0.978466e-6) vs CODATA (12.26426, 0.97847560e-6)
    # differ by ~4e-6 relative; the code follows CODATA.
    assert electron_wavelength_A(kv) == pytest.approx(relion_wavelength_A(kv), rel=1e-5)
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    v = kv * 1e3
    lam_m = h / math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c)))
    assert electron_wavelength_A(kv) == pytest.approx(lam_m * 1e10, rel=1e-7)
    assert electron_wavelength_A(300.0) == pytest.approx(0.019687, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_scalar_reference(xp, dtype):
    rng = np.random.default_rng(0)
    fy, fx = _freqs(rng)
    cols = list(zip(*PARTICLES, strict=True))
    got = host(ctf_values(fy, fx, *[np.array(c) for c in cols], xp=xp, dtype=dtype))
    assert got.shape == (len(PARTICLES), fy.size)
    assert got.dtype == dtype
    # exact formula with the code's wavelength
    ref = np.array([[ctf_scalar(a, b, *p, lam=float(electron_wavelength_A(p[3])))
                     for a, b in zip(fy, fx, strict=True)] for p in PARTICLES])
    assert_allclose(got, ref, rtol=0, atol=5 * rtol_for(dtype))
    # RELION's own wavelength constants: chi differs by <= ~1e-3 rad at 3.3 A, 30000 A
    ref_relion = np.array([[ctf_scalar(a, b, *p) for a, b in zip(fy, fx, strict=True)]
                           for p in PARTICLES])
    assert_allclose(got, ref_relion, rtol=0, atol=2e-3)


def test_scalar_parameters_broadcast():
    fy, fx = _freqs(np.random.default_rng(1), 20)
    one = ctf_values(fy, fx, *PARTICLES[0], dtype=np.float64)
    assert one.shape == (1, 20)
    many = ctf_values(fy, fx, *[np.array(c) for c in zip(*PARTICLES, strict=True)],
                      dtype=np.float64)
    assert_allclose(one[0], many[0], rtol=1e-14)


@pytest.mark.parametrize("q", [0.0, 0.07, 0.1, 0.3])
def test_value_at_zero_frequency_is_amplitude_contrast(q):
    v = ctf_values([0.0], [0.0], 20000.0, 15000.0, 0.4, 300.0, 2.7, q, bfactor_A2=80.0,
                   dtype=np.float64)
    assert v[0, 0] == pytest.approx(q, abs=1e-15)


@pytest.mark.parametrize("q,dz,kv", [(0.1, 15000.0, 300.0), (0.07, 9000.0, 200.0),
                                     (0.0, 20000.0, 300.0)])
def test_first_zero_without_cs(q, dz, kv):
    """Cs = 0, no astigmatism: chi = pi lam dz s^2 + asin(Q) reaches pi at
    s0 = sqrt((pi - asin Q) / (pi lam dz))."""
    lam = float(electron_wavelength_A(kv))
    s0 = math.sqrt((math.pi - math.asin(q)) / (math.pi * lam * dz))
    eps = 1e-4 * s0
    s = np.array([0.5 * s0, s0 - eps, s0, s0 + eps])
    for a in (0.0, 0.7, 2.0):
        v = ctf_values(s * math.sin(a), s * math.cos(a), dz, dz, 0.3, kv, 0.0, q,
                       dtype=np.float64)[0]
        assert abs(v[2]) < 1e-12
        assert v[0] > 0 and v[1] > 0 and v[3] < 0


def test_phase_flip_returns_signs(xp):
    fy, fx = _freqs(np.random.default_rng(2))
    p = PARTICLES[0]  # B = 0
    full = host(ctf_values(fy, fx, *p, xp=xp, dtype=np.float64))
    flip = host(ctf_values(fy, fx, *p, phase_flip=True, xp=xp, dtype=np.float64))
    assert set(np.unique(flip)) <= {-1.0, 1.0}
    assert_allclose(flip, np.where(full >= 0, 1.0, -1.0))


def test_phase_flip_returns_signs_with_bfactor():
    fy, fx = _freqs(np.random.default_rng(3))
    p = PARTICLES[1]  # B = 50
    flip = ctf_values(fy, fx, *p, phase_flip=True, dtype=np.float64)
    assert set(np.unique(flip)) <= {-1.0, 1.0}


@pytest.mark.parametrize("theta", [0.3, -1.1, 2.0])
def test_astigmatism_rotates_with_angle(theta):
    """Rotating the astigmatism angle by theta rotates the CTF pattern by theta."""
    rng = np.random.default_rng(4)
    fy, fx = _freqs(rng, 100)
    du, dv, ang = 25000.0, 15000.0, 0.4
    base = ctf_values(fy, fx, du, dv, ang, 300.0, 2.7, 0.1, dtype=np.float64)
    c, s = math.cos(theta), math.sin(theta)
    rx, ry = c * fx - s * fy, s * fx + c * fy
    rot = ctf_values(ry, rx, du, dv, ang + theta, 300.0, 2.7, 0.1, dtype=np.float64)
    assert_allclose(rot, base, atol=1e-12)
    # defocus U acts along the astigmatism angle, V perpendicular to it
    s_probe = 0.05
    along = ctf_values([s_probe * math.sin(ang)], [s_probe * math.cos(ang)], du, dv, ang,
                       300.0, 2.7, 0.1, dtype=np.float64)
    iso_u = ctf_values([0.0], [s_probe], du, du, 0.0, 300.0, 2.7, 0.1, dtype=np.float64)
    perp = ctf_values([s_probe * math.cos(ang)], [-s_probe * math.sin(ang)], du, dv, ang,
                      300.0, 2.7, 0.1, dtype=np.float64)
    iso_v = ctf_values([0.0], [s_probe], dv, dv, 0.0, 300.0, 2.7, 0.1, dtype=np.float64)
    assert along[0, 0] == pytest.approx(iso_u[0, 0], abs=1e-12)
    assert perp[0, 0] == pytest.approx(iso_v[0, 0], abs=1e-12)


@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ctf_2d_grid(xp, n, dtype):
    psize = 1.3
    p = PARTICLES[1]
    got = host(ctf_2d(n, psize, *p, xp=xp, dtype=dtype))
    assert got.shape == (1, n, n // 2 + 1)
    ky, kx = freq_indices(n)
    ref = np.array([ctf_scalar(a / (n * psize), b / (n * psize), *p,
                               lam=float(electron_wavelength_A(p[3])))
                    for a, b in zip(ky.ravel(), kx.ravel(), strict=True)]).reshape(ky.shape)
    assert_allclose(got[0], ref, rtol=0, atol=5 * rtol_for(dtype))
    # an even function of the frequency: the kx = 0 column is symmetric in ky
    col = got[0, :, 0]
    assert_allclose(col[1:], col[1:][::-1], atol=5 * rtol_for(dtype))
