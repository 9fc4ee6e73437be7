"""The resolution schedule and its levels (pure functions; the classifier test is below)."""

import numpy as np
import pytest

from cryoclass.config import load_config
from cryoclass.em.levels import Level, make_level
from cryoclass.em.schedule import initial_resolution, next_resolution, supported_resolution
from cryoclass.geometry import make_geometry
from cryoclass.numerics.fourier import freq_indices, working_box


def geometry(*opts, box=64, pixel=4.0):
    cfg = load_config(None, ["classify.max_res_A=8", "preprocess.particle_diameter_A=150",
                             *opts])
    return make_geometry(box, pixel, cfg), cfg


def test_finest_level_is_the_geometry_grid():
    g, _ = geometry()
    lv = make_level(g, g.max_align_res_A)
    np.testing.assert_array_equal(lv.align, g.align)
    np.testing.assert_array_equal(lv.coarse, g.coarse)
    np.testing.assert_allclose(lv.psi_rad, g.psi_rad)
    np.testing.assert_allclose(lv.shifts_px, g.shifts_px)
    np.testing.assert_allclose(lv.shifts_coarse_px, g.shifts_coarse_px)
    assert lv.shift_step_px == g.shift_step_px
    assert lv.coeffs.size == g.n_coeffs


@pytest.mark.parametrize("res", [50.0, 30.0, 17.0, 11.0])
def test_level_is_the_fourier_cropped_box(res):
    g, _ = geometry()
    lv = make_level(g, res)
    m_l, _ = working_box(g.work_box, g.work_pixel_A, res)
    assert lv.work_box == m_l
    # the level's coefficients are those of the cropped box's half plane inside the radius
    ky, kx = freq_indices(m_l)
    r = np.hypot(ky, kx)
    inside = (r <= lv.radius_px + 1e-9) & (np.abs(ky) < m_l / 2) & (kx < m_l / 2)
    assert lv.coeffs.size == int(inside.sum())
    assert lv.align.size == lv.coeffs.size - 1  # all but the zero frequency
    # coarser level: fewer rotations and shifts, larger steps
    fine = make_level(g, g.max_align_res_A)
    assert lv.psi_rad.size < fine.psi_rad.size
    assert lv.shift_step_px >= fine.shift_step_px
    assert np.isclose(np.degrees(2 * np.pi / lv.psi_rad.size),
                      min(15.0, np.degrees(res / 150.0)), rtol=0.1)


def test_level_is_clamped_to_the_alignment_range():
    g, _ = geometry()
    assert make_level(g, 1.0).res_A == g.max_align_res_A
    coarse = make_level(g, 1e4)
    assert coarse.radius_px == pytest.approx(4.0)
    assert isinstance(coarse, Level)


def test_configured_psi_step_is_kept_at_the_finest_level_and_a_floor_elsewhere():
    g, _ = geometry("search.psi_step_deg=10")
    assert np.isclose(np.degrees(make_level(g, 8.0).psi_rad[1]), 10.0)
    assert np.degrees(make_level(g, 40.0).psi_rad[1]) >= 14.9


def test_initial_resolution_from_the_particle_diameter():
    g, cfg = geometry()
    assert initial_resolution(g, cfg) == pytest.approx(50.0)
    g2, cfg2 = geometry("classify.initial_res_A=30")
    assert initial_resolution(g2, cfg2) == pytest.approx(30.0)
    g3, cfg3 = geometry("classify.resolution_schedule=false")
    assert initial_resolution(g3, cfg3) == g3.max_align_res_A


def frc_curves(g, cut_A, k=3):
    """FRC 1 up to cut_A, 0 beyond (each of k classes)."""
    f = np.where(g.shell_res_A >= cut_A, 1.0, 0.0)
    return np.repeat(f[None], k, 0)


def test_next_resolution_rises_by_the_margin_and_never_falls():
    g, cfg = geometry()
    frc = frc_curves(g, 25.0)
    res = supported_resolution(frc, np.ones(3), g.shell_res_A)
    assert 20.0 < res < 30.0
    nxt = next_resolution(50.0, frc, np.ones(3), g, cfg)
    assert nxt == pytest.approx(1.0 / (1.0 / res + 2.0 / 150.0))
    # poor classes do not lower the level; perfect classes stop at the maximum
    assert next_resolution(nxt, frc_curves(g, 100.0), np.ones(3), g, cfg) == nxt
    assert next_resolution(nxt, np.ones_like(frc), np.ones(3), g, cfg) == g.max_align_res_A
    # weights: an empty class does not count
    bad = frc.copy()
    bad[2] = 0.0
    assert supported_resolution(bad, [1.0, 1.0, 0.0], g.shell_res_A) == res


def test_schedule_off_always_aligns_at_the_maximum():
    g, cfg = geometry("classify.resolution_schedule=false")
    assert next_resolution(50.0, frc_curves(g, 60.0), np.ones(3), g, cfg) == g.max_align_res_A


def test_schedule_keeps_classes_from_fitting_noise_on_continuous_views_at_low_snr():
    """Continuous random views at SNR 0.02: aligned at full resolution from iteration 1,
    random classes lock onto high-frequency noise (their power beyond 25 Å, where these
    particles hold almost no signal, is several times larger); with the schedule it is not.
    """
    from cryoclass.em import classify
    from cryoclass.io.memory import table_from_simulation
    from cryoclass.numerics.fourier import radius_grid, to_fourier
    from cryoclass.parallel.comm import Comm
    from cryoclass.simulate import SimulationParams, simulate_images

    p = SimulationParams(n_particles=500, box_px=48, pixel_size_A=5.0,
                         particle_diameter_A=150, n_species=1, views_per_species=0, snr=0.02,
                         junk_fraction=0.0, duplicate_fraction=0.0, seed=2)
    images, _, truth = simulate_images(p)
    table = table_from_simulation(images, truth, p.pixel_size_A, p.voltage_kv, p.cs_mm,
                                  p.amplitude_contrast)
    high, low, levels = {}, {}, {}
    for on in (True, False):
        cfg = load_config(None, ["classify.n_classes=3", "classify.max_res_A=10",
                                 "classify.online_em_iters=6",
                                 "classify.batch_size_per_class=80",
                                 "preprocess.particle_diameter_A=150", "output.progress=false",
                                 f"classify.resolution_schedule={str(on).lower()}"])
        r = classify(table, cfg, Comm(None))
        cl = r.state.classes
        m = cl.shape[-1]
        rad = radius_grid(m)
        power = np.abs(to_fourier(cl)) ** 2
        total = power.sum(axis=(1, 2))
        high[on] = np.median(power[:, rad > m * r.geom.work_pixel_A / 25.0].sum(1) / total)
        low[on] = np.median(power[:, (rad > 0) & (rad <= m * r.geom.work_pixel_A / 40.0)]
                            .sum(1) / total)
        levels[on] = [rec["align_res_A"] for rec in r.state.history]
    assert high[True] < 0.5 * high[False], (high, levels)
    assert low[True] > 0.8 * low[False], low  # the signal the particles hold is kept
    assert levels[True][0] == pytest.approx(50.0) and levels[True][-1] > 10.0
    assert all(lv == pytest.approx(10.0) for lv in levels[False])
    assert all(a >= b for a, b in zip(levels[True], levels[True][1:]))  # only rises


def test_uncertainty_factor_is_two_with_force_max_and_one_over_every_pose():
    from cryoclass.em.schedule import uncertainty_factor

    assert uncertainty_factor(load_config(None, [])) == 2.0
    assert uncertainty_factor(load_config(None, ["classify.force_max=false"])) == 2.0
    marginal = ["classify.force_max=false", "search.mode=exhaustive"]
    assert uncertainty_factor(load_config(None, marginal)) == 1.0
    assert uncertainty_factor(load_config(None, [*marginal,
                                                 "classify.uncertainty_factor=3"])) == 3.0
    assert uncertainty_factor(load_config(None, ["classify.uncertainty_factor=1.5"])) == 1.5
