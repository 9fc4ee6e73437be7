"""The hard-benchmark metrics of ``cryoclass evaluate`` on synthetic truth with known answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from cryoclass import evaluate as ev
from cryoclass.simulate import PRESETS, SimulationParams, simulate_dataset
from cryoclass.simulation.engine import Simulator
from cryoclass.simulation.views import random_rotations, rot_z, rotation_to_z


def _axis_angle(axis, angle_rad):
    """Rotation matrices (m, 3, 3) about unit axes (m, 3) by angles (m,) (Rodrigues)."""
    k = np.zeros((axis.shape[0], 3, 3))
    k[:, 0, 1], k[:, 0, 2] = -axis[:, 2], axis[:, 1]
    k[:, 1, 0], k[:, 1, 2] = axis[:, 2], -axis[:, 0]
    k[:, 2, 0], k[:, 2, 1] = -axis[:, 1], axis[:, 0]
    s, c = np.sin(angle_rad)[:, None, None], np.cos(angle_rad)[:, None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def _cone_members(rng, r_ref, n, max_tilt_deg):
    """Members around the reference frame ``r_ref``: full rotations Rz(g) r_ref B.

    ``B`` tilts about an axis perpendicular to the reference direction, so the true
    in-plane angle relative to the reference is exactly ``g`` (up to the class-mean
    direction differing slightly from the reference). Returns (view rotations R_v,
    true psi in deg, g in rad).
    """
    m = r_ref[2]
    u = rng.standard_normal((n, 3))
    u -= (u @ m)[:, None] * m
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    b = _axis_angle(u, np.deg2rad(rng.uniform(0, max_tilt_deg, n)))
    g = rng.uniform(-np.pi, np.pi, n)
    full = rot_z(g) @ r_ref @ b
    psi_deg = rng.uniform(0, 360, n)
    r_v = rot_z(-np.deg2rad(psi_deg)) @ full  # truth stores R_v with full = Rz(psi) R_v
    return r_v, psi_deg, g


def _synthetic_classes(seed=0, n_per=80, tilt=8.0):
    rng = np.random.default_rng(seed)
    refs = [np.eye(3), rotation_to_z(np.array([0.0, 0.0, -1.0]))]  # both poles
    refs += list(random_rotations(rng, 4))
    rots, psis, gs, cls = [], [], [], []
    for k, r in enumerate(refs):
        r_v, psi, g = _cone_members(rng, r, n_per, tilt)
        rots.append(r_v)
        psis.append(psi)
        gs.append(g)
        cls.append(np.full(n_per, k + 1))
    return (np.concatenate(rots), np.concatenate(psis), np.concatenate(gs),
            np.concatenate(cls), rng)


def test_inplane_consistency_perfect_random_and_wrong_sign():
    rot, psi_true, g, cls, rng = _synthetic_classes()
    members = {k: np.flatnonzero(cls == k) for k in np.unique(cls)}
    offset = rng.uniform(-np.pi, np.pi, cls.max() + 1)[cls]  # each class its own reference
    perfect = ev.inplane_consistency(rot, psi_true, g + offset, members)
    assert perfect["inplane_circular_std_deg"] < 2.0, perfect
    noisy = ev.inplane_consistency(rot, psi_true, g + offset + np.deg2rad(
        rng.normal(0, 10, g.size)), members)
    assert 7.0 < noisy["inplane_circular_std_deg"] < 13.0, noisy
    random = ev.inplane_consistency(rot, psi_true, rng.uniform(-np.pi, np.pi, g.size), members)
    assert random["inplane_circular_std_deg"] > 60.0, random
    flipped = ev.inplane_consistency(rot, psi_true, -g + offset, members)
    assert flipped["inplane_circular_std_deg"] > 60.0, flipped
    # the raw truth psi is no in-plane angle: R_v differs between members
    raw = ev.inplane_consistency(rot, psi_true, np.deg2rad(psi_true) + offset, members)
    assert raw["inplane_circular_std_deg"] > 60.0, raw


def test_inplane_angle_matches_the_images():
    """gamma from inplane_angles_rad rotates the mean-view projection onto the member."""
    p = SimulationParams(**{**PRESETS["hard"], "n_particles": 1})
    sim = Simulator(p, plan=False)
    rng = np.random.default_rng(3)
    r_ref = random_rotations(rng, 1)[0]
    r_v, psi, _ = _cone_members(rng, r_ref, 6, 3.0)
    m = ev.mean_direction(ev.viewing_directions(r_v))
    gamma = ev.inplane_angles_rad(r_v, psi, m)
    images = sim.clean_projection(0, r_v, psi)
    r_m = np.repeat(rotation_to_z(m)[None], 6, 0)
    good = sim.clean_projection(0, r_m, np.degrees(gamma))
    wrong = sim.clean_projection(0, r_m, -np.degrees(gamma))
    for a, b, c in zip(images, good, wrong, strict=True):
        assert _corr(a, b) > 0.9 > _corr(a, c) + 0.1


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_view_spread_against_its_random_baseline():
    rot, _, _, cls, _ = _synthetic_classes(tilt=10.0)
    members = {k: np.flatnonzero(cls == k) for k in np.unique(cls)}
    r = ev.view_spread(rot, members)
    # uniform tilt in [0, 10] deg about the reference: mean angle about 5 deg
    assert 3.0 < r["view_spread_deg"] < 7.0, r
    assert r["view_spread_random_deg"] > 40.0 and r["view_spread_ratio"] < 0.2, r
    shuffled = np.random.default_rng(1).permutation(cls)
    rs = ev.view_spread(rot, {k: np.flatnonzero(shuffled == k) for k in np.unique(cls)})
    assert 0.85 < rs["view_spread_ratio"] < 1.15, rs
    # the permutation test: grouped views sit far below every permutation, shuffled
    # labels inside the null distribution
    assert r["view_spread_p_value"] == 1.0 / (ev.N_NULL_PERMUTATIONS + 1) and r["view_spread_z"] > 10
    assert rs["view_spread_p_value"] > 0.01 and abs(rs["view_spread_z"]) < 4, rs


def test_view_spread_permutation_test_detects_a_weak_grouping():
    """A ratio near 1 can still be better than random; the permutation test tells."""
    rng = np.random.default_rng(3)
    rot = random_rotations(rng, 3000)
    d = ev.viewing_directions(rot)
    centres = ev.viewing_directions(random_rotations(rng, 10))
    cls = rng.integers(0, 10, d.shape[0])
    weak = rng.random(d.shape[0]) < 0.1  # one member in ten goes to its nearest centre
    cls[weak] = np.argmax(d[weak] @ centres.T, axis=1)
    r = ev.view_spread(rot, {k: np.flatnonzero(cls == k) for k in range(10)})
    assert 0.95 < r["view_spread_ratio"] < 1.0, r  # barely below random ...
    assert r["view_spread_p_value"] < 0.01 and r["view_spread_z"] > 3, r  # ... but not chance
    none = ev.view_spread(rot, {k: np.flatnonzero(rng.permutation(cls) == k) for k in range(10)})
    assert none["view_spread_p_value"] > 0.01, none


def test_opposite_views_see_a_class_of_a_view_and_its_mirror():
    rot, _, _, cls, _ = _synthetic_classes(tilt=10.0)
    members = {k: np.flatnonzero(cls == k) for k in np.unique(cls)}
    pure = ev.opposite_views(rot, members)
    assert pure["opposite_view_fraction"] < 0.01, pure
    assert pure["view_axial_spread_deg"] < 7.0 < 30.0 < pure["view_axial_spread_random_deg"]
    # turn every other member of each class to look from the opposite side (a flip
    # about the image x axis: d -> -d)
    flip = np.diag([1.0, -1.0, -1.0])
    mixed = rot.copy()
    for r in members.values():
        mixed[r[::2]] = flip @ rot[r[::2]]
    mix = ev.opposite_views(mixed, members)
    assert 0.45 < mix["opposite_view_fraction"] <= 0.5, mix
    assert abs(mix["view_axial_spread_deg"] - pure["view_axial_spread_deg"]) < 0.5, mix
    assert ev.view_spread(mixed, members)["view_spread_ratio"] > 0.8  # the plain spread


def test_junk_segregation_counts():
    # class 1: 8 good + 2 noise; class 2: 1 good + 4 broken (junk class); class 3: 3 good +
    # 3 off_centre (tie: junk class)
    jt = (["", ] * 8 + ["noise"] * 2 + [""] + ["broken"] * 4 + [""] * 3 + ["off_centre"] * 3)
    cls = np.array([1] * 10 + [2] * 5 + [3] * 6)
    r = ev.junk_segregation(cls, np.array(jt, dtype=object))
    assert r["junk_in_good_classes"] == pytest.approx(2 / 9)
    assert r["good_in_junk_classes"] == pytest.approx(4 / 12)
    assert r["junk_in_good_classes_noise"] == 1.0
    assert r["junk_in_good_classes_broken"] == 0.0
    assert r["junk_in_good_classes_off_centre"] == 0.0
    assert (r["good_classes"], r["junk_classes"]) == (1, 2)


def _blob(n, rng):
    y, x = np.mgrid[:n, :n] - n // 2
    img = np.exp(-((x - 3) ** 2 / 60.0 + (y + 2) ** 2 / 25.0))
    img += 0.6 * np.exp(-((x + 6) ** 2 + (y - 5) ** 2) / 12.0)
    return img


def test_streak_index_sees_parallel_streaks_only():
    n, rng = 64, np.random.default_rng(0)
    clean = np.stack([_blob(n, rng)] * 8)
    iso = clean + 0.05 * rng.standard_normal((8, n, n))
    # streaks: noise constant along a direction (here rows of a rotated 1D noise)
    line = rng.standard_normal((8, 1, n))
    streaky = clean + 0.05 * np.repeat(line, n, axis=1)
    i_iso, i_streak = ev.streak_index(iso), ev.streak_index(streaky)
    base = ev.streak_index_baseline(n)
    assert 0.9 < base < 1.1
    assert np.all(i_iso < ev.STREAK_THRESHOLD), i_iso
    assert np.all(i_streak > 2 * ev.STREAK_THRESHOLD), i_streak
    # an average low-passed by the classifier is judged in its own outer shells
    r = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :])

    def low(x):
        return np.fft.irfft2(np.fft.rfft2(x) * (r < 0.3), s=(n, n))

    assert np.all(ev.streak_index(low(iso)) < ev.STREAK_THRESHOLD)
    assert np.all(ev.streak_index(low(streaky)) > 2 * ev.STREAK_THRESHOLD)
    assert np.isnan(ev.streak_index(np.zeros((1, n, n)))).all()


def test_aligned_ncc_finds_rotation_and_shift():
    from cryoclass.numerics.transforms import rotate_images

    n, rng = 64, np.random.default_rng(0)
    ref = _blob(n, rng)
    moved = np.roll(rotate_images(ref[None], np.array([np.deg2rad(37.0)]))[0], (3, -2), (0, 1))
    assert ev.aligned_ncc(moved, ref) > 0.98
    assert ev.aligned_ncc(rng.standard_normal((n, n)), ref) < 0.3


def test_duplicate_pairs_resolved():
    dup_of = np.array([-1, 0, -1, 2, -1, -1])
    both = ev.duplicate_pairs_resolved(dup_of, np.ones(6, bool))
    assert both["duplicate_pairs_resolved"] == 0.0
    one = ev.duplicate_pairs_resolved(dup_of, np.array([1, 0, 0, 1, 1, 0], bool))
    assert one["duplicate_pairs_resolved"] == 1.0
    assert one["removed_rows_in_pairs"] == pytest.approx(2 / 3)


# --- end to end: a simulated hard data set and STAR files of known quality ------------------

@pytest.fixture(scope="module")
def hard_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("hard")
    p = dataclasses.replace(SimulationParams(**PRESETS["hard"]), n_particles=400,
                            duplicate_fraction=0.05, seed=2)
    star = simulate_dataset(base / "data", p)
    return base, star


def _write_classified(path, names, cls, psi_deg, keep=None):
    from cryoclass.io.star import write_star

    keep = np.arange(len(names)) if keep is None else keep
    part = pd.DataFrame({"rlnImageName": np.asarray(names, dtype=object)[keep],
                         "rlnClassNumber": cls[keep], "rlnAnglePsi": psi_deg[keep]})
    write_star(path, {"particles": part})


def _perfect(truth_path, n_dirs=8):
    """Classes by nearest of n_dirs directions (junk: the last class), RELION-convention psi."""
    import h5py

    with h5py.File(truth_path) as f:
        rot, psi, jt = f["rotation"][()], f["psi_deg"][()], f["junk_type"].asstr()[()]
    good = jt == ""
    d = ev.viewing_directions(rot)
    golden = np.pi * (3 - np.sqrt(5))
    z = 1 - (np.arange(n_dirs) + 0.5) * 2 / n_dirs
    r = np.sqrt(1 - z * z)
    centres = np.stack([r * np.cos(golden * np.arange(n_dirs)),
                        r * np.sin(golden * np.arange(n_dirs)), z], 1)
    cls = np.argmax(d @ centres.T, axis=1) + 1
    cls[~good] = n_dirs + 1
    gamma = np.zeros(cls.size)
    means = {}
    for k in range(1, n_dirs + 1):
        sel = np.flatnonzero((cls == k) & good)
        means[k] = ev.mean_direction(d[sel])
        gamma[sel] = ev.inplane_angles_rad(rot[sel], psi[sel], means[k])
    return cls, -np.degrees(gamma), means  # _rlnAnglePsi = -psi (ours)


def test_evaluate_star_perfect_random_and_relion_layout(hard_data):
    from cryoclass.io.mrc import write_stack

    base, star = hard_data
    truth = base / "data" / "truth.h5"
    names, t = ev.truth_names(truth)
    cls, psi_rln, means = _perfect(truth)
    sim = ev_sim(truth)
    avgs = np.zeros((cls.max(), 64, 64), np.float32)
    for k, m in means.items():
        avgs[k - 1] = sim.clean_projection(0, rotation_to_z(m)[None], [25.0 * k])[0]
    run = base / "perfect"
    run.mkdir()
    _write_classified(run / "particles.star", names, cls, psi_rln)
    write_stack(run / "class_averages.mrcs", avgs, 4.0)
    r = ev.evaluate_star(truth, run / "particles.star")
    assert r["junk_in_good_classes"] == 0.0 and r["good_in_junk_classes"] == 0.0
    assert set(k for k in r if k.startswith("junk_in_good_classes_")) == {
        "junk_in_good_classes_noise", "junk_in_good_classes_off_centre",
        "junk_in_good_classes_broken"}
    assert r["view_spread_ratio"] < 0.6
    assert r["inplane_circular_std_deg"] < 15.0  # classes span ~40 deg cones: not zero
    assert r["class_projection_ncc"] > 0.97
    assert r["duplicate_pairs_resolved"] == 0.0
    # the in-plane sign convention matters: RELION's and our _rlnAnglePsi sense
    _write_classified(run / "flipped.star", names, cls, -psi_rln)
    flipped = ev.evaluate_star(truth, run / "flipped.star", run / "class_averages.mrcs")
    assert flipped["inplane_circular_std_deg"] > 60.0
    # RELION layout: run_it015_data.star finds run_it015_classes.mrcs; duplicates dropped
    rel = base / "relion"
    rel.mkdir()
    dup_of = t["duplicate_of"]
    keep = np.setdiff1d(np.arange(cls.size), np.flatnonzero(dup_of >= 0))
    _write_classified(rel / "run_it015_data.star", names, cls, psi_rln, keep)
    noisy = avgs + np.random.default_rng(0).standard_normal(avgs.shape).astype(np.float32) * 3
    write_stack(rel / "run_it015_classes.mrcs", noisy, 4.0)
    rr = ev.evaluate_star(truth, rel / "run_it015_data.star")
    assert rr["class_averages"].endswith("run_it015_classes.mrcs")
    assert rr["duplicate_pairs_resolved"] == 1.0
    assert rr["class_projection_ncc"] < r["class_projection_ncc"]
    # random classes and angles
    rng = np.random.default_rng(0)
    rnd_cls = rng.integers(1, cls.max() + 1, cls.size)
    _write_classified(run / "random.star", names, rnd_cls, rng.uniform(-180, 180, cls.size))
    rnd = ev.evaluate_star(truth, run / "random.star", run / "class_averages.mrcs")
    assert rnd["junk_in_good_classes"] > 0.9
    assert rnd["view_spread_ratio"] > 0.9 and rnd["inplane_circular_std_deg"] > 60.0
    assert rnd["class_projection_ncc"] < r["class_projection_ncc"]


def ev_sim(truth):
    from cryoclass.simulation.dataset import simulator_from_truth

    return simulator_from_truth(truth)


def test_cli_simulate_preset_and_evaluate_classes_flag(tmp_path, hard_data):
    import json

    from cryoclass.cli import main
    from cryoclass.io.mrc import write_stack

    assert main(["-q", "simulate", str(tmp_path / "d"), "--preset", "hard", "--n", "50",
                 "--snr", "0.02"]) == 0
    import h5py

    with h5py.File(tmp_path / "d" / "truth.h5") as f:
        p = json.loads(f.attrs["params_json"])
    assert (p["snr"], p["n_particles"], p["views_per_species"]) == (0.02, 50, 0)
    base, _ = hard_data
    truth = base / "data" / "truth.h5"
    names, _ = ev.truth_names(truth)
    rng = np.random.default_rng(5)
    cls = rng.integers(1, 4, names.size)
    _write_classified(tmp_path / "x.star", names, cls, rng.uniform(-180, 180, names.size))
    write_stack(tmp_path / "avg.mrcs", rng.standard_normal((3, 64, 64)).astype(np.float32), 4.0)
    out = tmp_path / "x.json"
    assert main(["-q", "evaluate", str(truth), str(tmp_path / "x.star"), "--json", str(out),
                 "--classes", str(tmp_path / "avg.mrcs")]) == 0
    r = json.loads(out.read_text())
    assert r["class_averages"].endswith("avg.mrcs") and "class_projection_ncc" in r
