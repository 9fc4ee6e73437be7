"""The information estimate against its definition, and the choice it drives."""

from __future__ import annotations

import numpy as np
import pytest

from cryoclass.config import load_config
from cryoclass.em.schedule import MARGINAL_BELOW_INFORMATION, marginalize_poses
from cryoclass.numerics.information import information_estimate, information_sums

from conftest import host


def lowpass(images, pixel_A, res_A):
    n = images.shape[-1]
    f = np.fft.fftfreq(n) / pixel_A
    disc = np.hypot(f[:, None], f[None, :]) <= 1.0 / res_A
    return np.fft.ifft2(np.fft.fft2(images) * disc).real


def particles(n_img, n=64, pixel_A=4.0, diameter_A=170.0, amp=1.0, seed=0):
    """Smooth random particles inside the circle plus white noise of unit variance."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] - n / 2
    inside = np.hypot(x, y) < 0.5 * diameter_A / pixel_A - 3
    clean = lowpass(rng.standard_normal((n_img, n, n)), pixel_A, 30.0) * inside
    clean *= amp / clean[:, inside].std()
    return clean, clean + rng.standard_normal((n_img, n, n))


@pytest.mark.parametrize("amp", [0.2, 0.3])
def test_information_is_the_signal_power_over_the_noise_up_to_20_A(xp, amp):
    """Parseval: sum_q |S(q)|^2 / sigma^2 up to 20 Å is the low-passed signal's energy.

    (Here 40 and 90, around the auto threshold; the estimate's own noise is about 1.4
    for 300 images and the mean of ratios adds about 1.)
    """
    clean, noisy = particles(300, amp=amp)
    truth = (lowpass(clean, 4.0, 20.0) ** 2).sum(axis=(1, 2)).mean()
    est = information_estimate(host(information_sums(xp.asarray(noisy), 4.0, 170.0)))
    assert est == pytest.approx(truth, rel=0.1)


def test_information_scales_with_the_snr_not_the_image_scale_or_diameter():
    _, weak = particles(300, amp=0.2, seed=1)
    _, strong = particles(300, amp=0.4, seed=1)
    i_weak = information_estimate(information_sums(weak, 4.0, 170.0))
    i_strong = information_estimate(information_sums(strong, 4.0, 170.0))
    assert i_strong / i_weak == pytest.approx(4.0, rel=0.2)  # power: amplitude squared
    assert information_estimate(information_sums(100.0 * weak, 4.0, 170.0)) == pytest.approx(
        i_weak, rel=1e-9)
    assert information_estimate(information_sums(weak, 4.0, 200.0)) == pytest.approx(
        i_weak, rel=0.2)  # a larger circle holds the same signal


def test_blank_images_and_no_background_give_no_estimate():
    _, noisy = particles(10)
    blank = np.zeros((5, 64, 64))
    both = information_sums(np.concatenate([noisy, blank]), 4.0, 170.0)
    assert both[1] == 10 and np.isfinite(information_estimate(both))
    no_room = information_sums(noisy, 4.0, 64 * 4.0 * 1.45)  # the circle covers the box
    assert no_room[1] == 0 and np.isnan(information_estimate(no_room))


def test_auto_marginalizes_below_the_threshold_only():
    auto = load_config(None, [])
    assert auto.classify.marginalize_poses == "auto"
    assert marginalize_poses(auto, 0.5 * MARGINAL_BELOW_INFORMATION)
    assert not marginalize_poses(auto, 2.0 * MARGINAL_BELOW_INFORMATION)
    assert not marginalize_poses(auto, float("nan"))  # unknown: the configured search
    always = load_config(None, ["classify.marginalize_poses=always"])
    never = load_config(None, ["classify.marginalize_poses=never"])
    assert marginalize_poses(always, 1e6) and not marginalize_poses(never, 0.0)


def run_tiny(snr, *opts):
    from cryoclass.em import classify
    from cryoclass.io.memory import table_from_simulation
    from cryoclass.parallel.comm import Comm
    from cryoclass.simulate import SimulationParams, simulate_images

    p = SimulationParams(n_particles=200, box_px=48, pixel_size_A=5.0,
                         particle_diameter_A=150, n_species=1, views_per_species=0, snr=snr,
                         junk_fraction=0.0, duplicate_fraction=0.0, seed=3)
    images, _, truth = simulate_images(p)
    table = table_from_simulation(images, truth, p.pixel_size_A, p.voltage_kv, p.cs_mm,
                                  p.amplitude_contrast)
    cfg = load_config(None, ["classify.n_classes=2", "classify.max_res_A=12",
                             "classify.online_em_iters=2", "classify.batch_size_per_class=50",
                             "preprocess.particle_diameter_A=150", "output.progress=false",
                             *opts])
    return classify(table, cfg, Comm(None))


def test_low_information_data_are_marginalized_over_every_pose():
    """The driver measures the particles and, at low information, runs force max off over
    every pose (the pose marginal is then spread: its best-pose mass is well below 1)."""
    low = run_tiny(0.01)
    high = run_tiny(0.5)
    assert low.state.history[0]["information_20A"] < MARGINAL_BELOW_INFORMATION
    assert high.state.history[0]["information_20A"] > MARGINAL_BELOW_INFORMATION
    # the online-EM iterations marginalize, the final full passes use the configured search
    assert [rec["pose_marginal"] for rec in low.state.history] == [
        int(rec["kind"] == "online") for rec in low.state.history]
    assert {rec["kind"] for rec in low.state.history} == {"online", "full"}
    assert all(rec["pose_marginal"] == 0 for rec in high.state.history)
    assert low.state.pose_marginal == 1 and high.state.pose_marginal == 0
    # the first iteration's noise: inflated by f^2 = 4 with force max, not over every pose
    for run, f in ((low, 1.0), (high, 2.0)):
        rec = run.state.history[0]
        np.testing.assert_allclose(rec["sigma2_used"], f**2 * rec["sigma2_init"], rtol=1e-12)
    forced = run_tiny(0.01, "classify.marginalize_poses=never")
    assert forced.state.pose_marginal == 0
    always = run_tiny(0.5, "classify.marginalize_poses=always")
    assert always.state.pose_marginal == 1
    assert all(rec["pose_marginal"] == 1 for rec in always.state.history)
