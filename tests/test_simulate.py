"""Tests of the data simulator against its own truth and independent implementations."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util

import h5py
import numpy as np
import pytest
from scipy import ndimage

from cryoclass.errors import InputError
from cryoclass.numerics.ctf import ctf_2d
from cryoclass.numerics.fourier import to_fourier, to_real
from cryoclass.simulate import (
    JUNK_TYPES,
    SimulationParams,
    add_arguments,
    params_from_args,
    simulate_dataset,
    simulate_images,
)
from cryoclass.simulation.engine import Simulator

SMALL = SimulationParams(n_particles=60, box_px=48, pixel_size_A=4.0, seed=3)


def corr(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def rotate_shift(img, psi_deg, t_xy):
    """Independent reference: out(r) = img(R(-psi)(r - t)), r = (x, y) from (n//2, n//2)."""
    n = img.shape[0]
    c, s = np.cos(np.deg2rad(psi_deg)), np.sin(np.deg2rad(psi_deg))
    # input (y, x) = M @ (out (y, x) - centre - t) + centre, M = R(-psi) in (y, x) order
    m = np.array([[c, -s], [s, c]])
    centre = np.array([n // 2, n // 2], dtype=float)
    t_yx = np.array([t_xy[1], t_xy[0]])
    offset = centre - m @ (centre + t_yx)
    return ndimage.affine_transform(img.astype(np.float64), m, offset=offset, order=3,
                                    mode="constant")


# --- parameters and CLI ---------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    {"n_particles": 0}, {"box_px": 8}, {"snr": 0.0}, {"snr": -1.0}, {"junk_fraction": 1.0},
    {"junk_fraction": -0.1}, {"duplicate_fraction": 1.2}, {"pixel_size_A": 0.0},
    {"n_species": 0}, {"views_per_species": -1}, {"shift_sigma_px": -1.0},
    {"defocus_range_A": (20000.0, 10000.0)}, {"astig_max_A": 20000.0},
    {"species_fractions": (1.0, 2.0)}, {"chunk": 0}, {"snr": float("nan")},
    {"contrast_sd": -0.1}, {"contrast_sd": 1.5},
])
def test_bad_params_raise_input_error(bad):
    with pytest.raises(InputError):
        SimulationParams(**bad)


def test_cli_flags_round_trip():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--n", "500", "--box", "96", "--pixel-size", "2.5", "--species", "4",
                            "--filament", "--views-per-species", "0", "--snr", "0.1",
                            "--junk", "0.3", "--duplicates", "0.1", "--shift-sigma", "1.5",
                            "--defocus-range", "8000,20000", "--no-ctf", "--seed", "7",
                            "--species-fractions", "1,2,3,4"])
    p = params_from_args(ns)
    assert (p.n_particles, p.box_px, p.pixel_size_A, p.n_species) == (500, 96, 2.5, 4)
    assert p.include_filament and not p.ctf and p.views_per_species == 0
    assert p.defocus_range_A == (8000.0, 20000.0) and p.species_fractions == (1, 2, 3, 4)
    assert params_from_args(parser.parse_args([])) == SimulationParams()
    for flag in ("--n", "--box", "--snr", "--junk"):
        with pytest.raises(InputError):
            params_from_args(parser.parse_args([flag, "-1"]))
    help_text = parser.format_help()
    assert "Å" in help_text and "default" in help_text


# --- reproducibility ------------------------------------------------------------------

def test_reproducible_and_chunk_independent():
    a, ca, ta = simulate_images(SMALL)
    b, cb, tb = simulate_images(SMALL)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta["rotation"], tb["rotation"])
    sim = Simulator(SMALL)
    parts = [sim.generate(s, min(s + 17, 60))[0] for s in range(0, 60, 17)]
    np.testing.assert_array_equal(np.concatenate(parts), a)
    c, _, tc = simulate_images(SMALL, seed=4)
    assert not np.array_equal(a, c)
    # the first rows do not depend on N
    d, _, _ = simulate_images(SMALL, n=60)
    np.testing.assert_array_equal(d, a)


# --- image formation ------------------------------------------------------------------

def test_contrast_spread_scales_each_particle_and_keeps_the_rest():
    base = dataclasses.replace(SMALL, n_particles=200)
    spread = dataclasses.replace(base, contrast_sd=0.3)
    _, clean0, t0 = simulate_images(base, noise=False)
    img1, clean1, t1 = simulate_images(spread, noise=False)
    np.testing.assert_array_equal(t0["contrast"], 1.0)
    c = t1["contrast"]
    # exp(s z - s^2): log-normal, E[c^2] = 1, the requested spread of log c
    assert abs(np.std(np.log(c)) - 0.3) < 0.05 and abs(np.mean(c * c) - 1.0) < 0.15
    for key in ("rotation", "psi_deg", "shift_x_px", "defocus_u_A", "junk_type"):
        np.testing.assert_array_equal(t0[key], t1[key])  # every other draw is unchanged
    real = t1["source_species"] >= 0
    dup = t1["duplicate_of"] >= 0
    np.testing.assert_allclose(c[dup], c[t1["duplicate_of"][dup]])  # one object, one contrast
    # each noise-free image is its contrast times the same image without the spread
    np.testing.assert_allclose(clean1[real], clean0[real] * c[real, None, None].astype(np.float32),
                               rtol=1e-4, atol=1e-5 * np.abs(clean0).max())



def test_particle_is_rotated_shifted_projection():
    p = dataclasses.replace(SMALL, n_particles=40, junk_fraction=0.0, duplicate_fraction=0.0,
                            ctf=False, shift_sigma_px=3.0)
    _, clean, truth = simulate_images(p, noise=False)
    proj = truth["clean_projections"]
    for i in range(40):
        ref = rotate_shift(proj[truth["species"][i], truth["view_index"][i]],
                           truth["psi_deg"][i], (truth["shift_x_px"][i], truth["shift_y_px"][i]))
        assert corr(ref, clean[i]) > 0.98, i
        np.testing.assert_allclose(clean[i].sum(), ref.sum(), rtol=0.02)


def test_ctf_modulation_matches_numerics_ctf():
    p = dataclasses.replace(SMALL, n_particles=12, junk_fraction=0.0, duplicate_fraction=0.0)
    _, clean, truth = simulate_images(p, noise=False)
    proj = truth["clean_projections"]
    n = p.box_px
    ctf = ctf_2d(n, p.pixel_size_A, truth["defocus_u_A"], truth["defocus_v_A"],
                 np.deg2rad(truth["defocus_angle_deg"]), 300.0, 2.7, 0.07, 0.0, 0.0)
    assert np.all(truth["defocus_u_A"] >= 10000) and np.all(truth["defocus_u_A"] <= 25000)
    astig = truth["defocus_u_A"] - truth["defocus_v_A"]
    assert np.all((astig >= 0) & (astig <= 600))
    for i in range(12):
        ref = rotate_shift(proj[truth["species"][i], truth["view_index"][i]],
                           truth["psi_deg"][i], (truth["shift_x_px"][i], truth["shift_y_px"][i]))
        ref = to_real(to_fourier(ref) * ctf[i], n)
        assert corr(ref, clean[i]) > 0.95, i


def test_measured_snr_close_to_requested():
    for snr in (0.05, 1.0):
        p = dataclasses.replace(SMALL, n_particles=300, snr=snr)
        images, clean, truth = simulate_images(p)
        real = truth["species"] >= 0
        noise = images - clean
        measured = np.var(clean[real], axis=(1, 2)).mean() / np.var(noise)
        assert abs(measured / snr - 1) < 0.2, measured
        assert abs(np.var(noise) - 1.0) < 0.05


def test_noise_is_coloured():
    p = dataclasses.replace(SMALL, n_particles=64)
    images, clean, _ = simulate_images(p)
    power = np.abs(to_fourier(images - clean)) ** 2
    r = np.hypot(*np.meshgrid(np.fft.fftfreq(48), np.fft.rfftfreq(48), indexing="ij"))
    low, high = power[:, (r > 0.02) & (r < 0.08)].mean(), power[:, r > 0.4].mean()
    assert low > 2.0 * high


def test_views_are_clearly_different():
    p = dataclasses.replace(SimulationParams(), n_species=4, views_per_species=3)
    proj = Simulator(dataclasses.replace(p, n_particles=1)).clean_projections()[0]
    for k in range(4):
        for i in range(3):
            for j in range(i + 1, 3):
                best = max(corr(proj[k, i], ndimage.rotate(proj[k, j], a, reshape=False,
                                                            order=1))
                           for a in range(0, 360, 4))
                assert best < 0.9, (k, i, j, best)
    # different species differ too
    assert corr(proj[0, 0], proj[1, 0]) < 0.9


def test_continuous_views_and_filament():
    p = dataclasses.replace(SMALL, n_particles=50, views_per_species=0, include_filament=True,
                            junk_fraction=0.0, duplicate_fraction=0.0)
    _, _, truth = simulate_images(p, noise=False)
    rot = truth["rotation"]
    assert np.all(truth["view_index"] == -1)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)
    assert len({tuple(np.round(r.ravel(), 6)) for r in rot}) == 50  # all different
    assert truth["clean_projections"].shape == (3, 12, 48, 48)
    assert truth["species_names"][-1] == "filament"
    # the filament spans most of the box: long axis of its intensity distribution
    img = truth["clean_projections"][-1, 0]
    w = np.clip(img, 0, None)
    y, x = np.mgrid[:48, :48]
    cov = np.cov(np.stack([x.ravel(), y.ravel()]), aweights=w.ravel())
    ev = np.linalg.eigvalsh(cov)
    assert ev[1] > 6 * ev[0]  # elongated
    assert np.sqrt(12 * ev[1]) > 0.7 * 48  # uniform-rod length estimate


# --- junk, micrographs, duplicates ------------------------------------------------------

def test_junk_and_duplicate_fractions():
    p = SimulationParams(n_particles=2000, junk_fraction=0.25, duplicate_fraction=0.1)
    t = _plan_truth(p)
    junk = t["species"] < 0
    assert junk.sum() == 500
    assert set(t["junk_type"][junk]) == set(p.junk_types) == set(JUNK_TYPES) - {"broken", "other_particle"}
    assert np.all(t["junk_type"][~junk] == "")
    dup = t["duplicate_of"] >= 0
    n_orig = (~junk).sum() - dup.sum()
    assert abs(dup.sum() / n_orig - 0.1) < 0.002
    assert np.all(t["species"][dup] >= 0)
    p0 = dataclasses.replace(p, junk_fraction=0.0, duplicate_fraction=0.0)
    t0 = _plan_truth(p0)
    assert np.all(t0["species"] >= 0) and np.all(t0["duplicate_of"] == -1)


def _plan_truth(p):
    from cryoclass.simulation.dataset import truth_arrays

    return truth_arrays(Simulator(p))


def test_duplicates_are_second_picks_of_the_same_particle():
    p = SimulationParams(n_particles=3000, duplicate_fraction=0.1, pixel_size_A=3.0)
    t = _plan_truth(p)
    dup = np.nonzero(t["duplicate_of"] >= 0)[0]
    orig = t["duplicate_of"][dup]
    assert dup.size > 200 and np.all(t["duplicate_of"][orig] == -1)
    for key in ("species", "view_index", "psi_deg", "defocus_u_A", "defocus_v_A",
                "defocus_angle_deg", "micrograph", "object_id"):
        np.testing.assert_array_equal(t[key][dup], t[key][orig])
    np.testing.assert_array_equal(t["rotation"][dup], t["rotation"][orig])
    cx = t["location_x_px"] + t["shift_x_px"]
    cy = t["location_y_px"] + t["shift_y_px"]
    assert np.all(np.hypot(cx[dup] - cx[orig], cy[dup] - cy[orig]) < 1.0)
    d_A = 3.0 * np.hypot(t["location_x_px"][dup] - t["location_x_px"][orig],
                         t["location_y_px"][dup] - t["location_y_px"][orig])
    assert d_A.min() >= 20.0 and d_A.max() <= 60.0
    assert np.all(np.abs(dup - orig) > 1)  # not adjacent rows
    # rows are grouped by micrograph, each stack indexed from 0
    assert np.all(np.diff(t["micrograph"]) >= 0)
    starts = np.r_[0, np.nonzero(np.diff(t["micrograph"]))[0] + 1]
    assert np.all(t["index_in_stack"][starts] == 0)


def test_true_centres_do_not_overlap_and_stay_on_the_micrograph():
    p = SimulationParams(n_particles=1500, box_px=64, particles_per_micrograph=100)
    t = _plan_truth(p)
    first = t["duplicate_of"] < 0
    cx = (t["location_x_px"] + t["shift_x_px"])[first]
    cy = (t["location_y_px"] + t["shift_y_px"])[first]
    mic = t["micrograph"][first]
    counts = np.bincount(mic)  # physical objects (first picks) per micrograph
    assert counts.max() == 100 and np.all(counts[:-1] == 100)
    for m in np.unique(mic):
        sel = mic == m
        d = np.hypot(cx[sel, None] - cx[None, sel], cy[sel, None] - cy[None, sel])
        d[np.diag_indices_from(d)] = np.inf
        assert d.min() >= p.particle_diameter_px
    for key in ("location_x_px", "location_y_px"):
        assert t[key].min() >= p.box_px // 2 and t[key].max() <= 4096 - p.box_px // 2


def test_junk_images_look_like_their_type():
    p = dataclasses.replace(SMALL, n_particles=400, junk_fraction=0.5, snr=0.5)
    _, clean, t = simulate_images(p, noise=False)
    jt = t["junk_type"]
    assert np.all(clean[jt == "noise"] == 0)
    n = p.box_px
    y, x = np.mgrid[:n, :n] - n // 2
    for i in np.nonzero(jt == "ice_gradient")[0]:
        ramp = np.linalg.lstsq(np.stack([x.ravel(), y.ravel(), np.ones(n * n)], 1),
                               clean[i].ravel(), rcond=None)[0]
        assert np.hypot(*ramp[:2]) * n / 2 > 1.5  # ramp of several noise sigmas
    off = np.nonzero(jt == "off_centre")[0]
    r = np.hypot(t["shift_x_px"][off], t["shift_y_px"][off]) / n
    assert off.size and np.all((r >= 0.35) & (r <= 0.45))
    agg = np.nonzero(jt == "aggregate")[0]
    real = t["species"] >= 0
    assert np.mean(np.var(clean[agg], axis=(1, 2))) > np.mean(np.var(clean[real], axis=(1, 2)))


# --- files ------------------------------------------------------------------------------

def _digest(folder):
    """SHA-256 of every output file except truth.h5 (HDF5 object headers hold times).

    The MRC writer (cryoclass.io.mrc, via mrcfile) stamps the creation time into the
    header's text labels (bytes 224-1023); those bytes are masked, all others compared.
    """
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != "truth.h5":
            data = bytearray(f.read_bytes())
            if f.suffix == ".mrcs":
                data[224:1024] = bytes(800)
            out[str(f.relative_to(folder))] = hashlib.sha256(bytes(data)).hexdigest()
    return out


def test_dataset_files_reproducible_and_consistent(tmp_path):
    import mrcfile
    import pandas as pd

    from cryoclass.io.star import read_star

    p = dataclasses.replace(SMALL, n_particles=230, particles_per_micrograph=40, chunk=1000)
    star_a = simulate_dataset(tmp_path / "a", p)
    simulate_dataset(tmp_path / "b", dataclasses.replace(p, chunk=23))
    assert star_a.name == "particles.star"
    dig_a, dig_b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    n_mic = len(np.unique(read_star(star_a)["particles"]["rlnMicrographName"]))
    assert dig_a == dig_b and len(dig_a) == 1 + n_mic and n_mic >= 5
    blocks = read_star(star_a)
    optics, parts = blocks["optics"], blocks["particles"]
    assert optics["rlnImagePixelSize"].iloc[0] == 4.0 and optics["rlnImageSize"].iloc[0] == 48
    assert optics["rlnVoltage"].iloc[0] == 300 and optics["rlnAmplitudeContrast"].iloc[0] == 0.07
    assert len(parts) == 230 and parts["rlnImageName"].iloc[0] == "000001@stacks/mic_000000.mrcs"
    for col in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
                "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
                "rlnOpticsGroup"):
        assert col in parts
    images, clean, truth = simulate_images(p)
    with h5py.File(tmp_path / "a" / "truth.h5") as h5:
        for key in ("species", "view_index", "rotation", "psi_deg", "shift_x_px", "duplicate_of",
                    "defocus_u_A", "location_x_px"):
            np.testing.assert_array_equal(h5[key][()], truth[key])
        assert list(h5["junk_type"].asstr()[()]) == list(truth["junk_type"])
        np.testing.assert_array_equal(h5["clean_projections"][()], truth["clean_projections"])
        np.testing.assert_allclose(h5["signal_variance"][()], truth["signal_variance"],
                                   rtol=1e-5)
        assert h5.attrs["n_particles"] == 230 and "params_json" in h5.attrs
    np.testing.assert_allclose(parts["rlnDefocusU"], truth["defocus_u_A"], atol=1e-5)
    np.testing.assert_allclose(parts["rlnCoordinateX"], truth["location_x_px"])
    # every image in the stacks equals the in-memory simulation of the same row
    for row in (0, 57, 229):
        idx, stack = parts["rlnImageName"].iloc[row].split("@")
        with mrcfile.open(tmp_path / "a" / stack, permissive=True) as m:
            np.testing.assert_array_equal(m.data[int(idx) - 1], images[row])
            assert abs(float(m.voxel_size.x) - 4.0) < 1e-6
    assert isinstance(parts, pd.DataFrame)


def test_ctf_off_star_values(tmp_path):
    from cryoclass.io.star import read_star

    p = dataclasses.replace(SMALL, n_particles=20, ctf=False)
    blocks = read_star(simulate_dataset(tmp_path, p))
    assert blocks["optics"]["rlnAmplitudeContrast"].iloc[0] == 1.0
    assert blocks["optics"]["rlnSphericalAberration"].iloc[0] == 0.0
    assert np.all(blocks["particles"]["rlnDefocusU"] == 0.0)


@pytest.mark.skipif(importlib.util.find_spec("cryoclass.io.particles") is None,
                    reason="cryoclass.io.particles (load_particles) has not landed yet")
def test_star_reads_back_with_load_particles(tmp_path):
    from cryoclass.io.particles import load_particles

    p = dataclasses.replace(SMALL, n_particles=50)
    table = load_particles(simulate_dataset(tmp_path, p))
    images, _, truth = simulate_images(p)
    assert len(table) == 50
    meta = table.meta
    np.testing.assert_allclose(meta["defocus_u_A"], truth["defocus_u_A"], atol=1e-5)
    np.testing.assert_allclose(meta["defocus_angle_rad"], np.deg2rad(truth["defocus_angle_deg"]),
                               atol=1e-6)
    np.testing.assert_allclose(meta["location_x_px"], truth["location_x_px"])
    np.testing.assert_allclose(meta["pixel_size_A"], 4.0)
    np.testing.assert_array_equal(meta["image_index"], truth["index_in_stack"])
    np.testing.assert_array_equal(table.image_source().read(np.arange(50)), images)


# --- the hard benchmark: preset, junk mix, broken particles, projections at any view ---------

def test_preset_hard_and_explicit_flags_override_it():
    from cryoclass.simulate import PRESETS

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    p = params_from_args(parser.parse_args(["--preset", "hard"]))
    assert p == SimulationParams(**PRESETS["hard"])
    assert (p.views_per_species, p.n_species, p.phantoms) == (0, 1, ("asym_five",))
    assert p.junk_types == ("noise", "off_centre", "broken") and p.duplicate_fraction == 0.02
    assert 0.6 <= p.particle_diameter_px / p.box_px <= 0.7
    q = params_from_args(parser.parse_args(["--preset", "hard", "--snr", "0.02", "--n", "20000",
                                            "--junk-types", "noise,aggregate"]))
    assert (q.snr, q.n_particles, q.junk_types) == (0.02, 20000, ("noise", "aggregate"))
    assert q.box_px == 64 and q.pixel_size_A == 4.0
    with pytest.raises(InputError, match="unknown junk type"):
        params_from_args(parser.parse_args(["--junk-types", "noise,dust"]))
    with pytest.raises(InputError, match="unknown phantom"):
        params_from_args(parser.parse_args(["--species", "1", "--phantoms", "blob"]))


HARD_SMALL = SimulationParams(n_particles=300, box_px=64, pixel_size_A=4.0,
                              particle_diameter_A=170.0, n_species=1, phantoms=("asym_five",),
                              views_per_species=0, junk_fraction=0.5,
                              junk_types=("noise", "off_centre", "broken"),
                              off_centre_range=(0.4, 0.5), off_centre_edge=True, ctf=False,
                              seed=4)


def test_junk_mix_broken_and_off_centre_partly_outside():
    _, clean, t = simulate_images(HARD_SMALL, noise=False)
    jt = t["junk_type"]
    assert set(jt[t["species"] < 0]) == {"noise", "off_centre", "broken"}
    assert np.all(clean[jt == "noise"] == 0)
    sim = Simulator(HARD_SMALL, plan=False)
    real = np.flatnonzero(jt == "")
    mass = clean[real].sum(axis=(1, 2)).mean()  # no CTF: the sum is the particle's mass
    broken = clean[jt == "broken"].sum(axis=(1, 2)) / mass
    assert broken.size and np.all((broken > 0.3) & (broken < 0.62)), broken
    off = np.flatnonzero(jt == "off_centre")
    centred = sim.clean_projection(0, t["rotation"][off], t["psi_deg"][off])
    inside = clean[off].sum(axis=(1, 2)) / centred.sum(axis=(1, 2))
    assert off.size and np.all(inside < 0.97), inside  # part of the particle is outside


def test_other_particle_junk_is_another_design_of_the_same_size():
    from cryoclass.simulation.engine import other_phantom
    from cryoclass.simulation.phantoms import named_phantom

    p = dataclasses.replace(HARD_SMALL, junk_types=("other_particle",), n_particles=120)
    _, clean, t = simulate_images(p, noise=False)
    jt = t["junk_type"]
    assert set(jt[t["species"] < 0]) == {"other_particle"}
    own = named_phantom("asym_five", 170.0)
    other = other_phantom(170.0, 4.0, ("asym_five",))
    assert other.name not in ("asym_five",) and other.name.startswith("procedural_")
    for ph in (own, other):  # the same largest extent (the phantoms' scaling rule)
        r_max = np.sqrt((ph.coords_A ** 2).sum(axis=1)).max()
        assert r_max + 2 * ph.sigma_A[0] == pytest.approx(85.0, rel=0.02)
    # a species with that design pushes the other particle to the next design
    assert other_phantom(170.0, 4.0, (other.name,)).name != other.name
    real = np.flatnonzero(jt == "")
    mass = clean[jt == "other_particle"].sum(axis=(1, 2)) / clean[real].sum(axis=(1, 2)).mean()
    expected = other.weight.sum() / own.weight.sum()
    np.testing.assert_allclose(mass, expected, rtol=0.02)  # whole, inside the box


def test_clean_projection_from_truth_file_matches_the_images(tmp_path):
    from cryoclass.simulate import render_clean_projections

    p = dataclasses.replace(HARD_SMALL, n_particles=40, junk_fraction=0.0, shift_sigma_px=0.0,
                            duplicate_fraction=0.0, snr=0.3)
    simulate_dataset(tmp_path, p)
    _, clean, t = simulate_images(p, noise=False)
    proj = render_clean_projections(tmp_path / "truth.h5", t["species"], t["rotation"],
                                    t["psi_deg"])
    np.testing.assert_allclose(proj, clean, atol=1e-4 * np.abs(clean).max())


def test_asym_five_fills_the_box_and_views_differ():
    from cryoclass.evaluate import rotationally_ambiguous
    from cryoclass.simulation.views import (
        polar_images,
        random_rotations,
        rotational_correlation,
    )

    sim = Simulator(HARD_SMALL, plan=False)
    rot = random_rotations(np.random.default_rng(0), 40)
    proj = sim.clean_projection(0, rot)
    n = HARD_SMALL.box_px
    extent = []
    for im in proj:
        ys, xs = np.nonzero(im > 0.05 * im.max())
        pts = np.stack([xs, ys], 1).astype(float)
        extent.append(max(np.ptp(pts @ np.array([np.cos(a), np.sin(a)]))
                          for a in np.linspace(0, np.pi, 36)) / n)
    assert 0.45 < np.median(extent) < 0.7, np.median(extent)
    assert not any(rotationally_ambiguous(im) for im in proj[:8])
    corr = rotational_correlation(polar_images(proj))
    d = rot[:, 2, :]
    far = (d @ d.T) < 0.5  # directions more than 60 deg apart
    assert np.median(corr[far]) < 0.8


PDB_LINES = [  # two models; the second must be ignored
    "HEADER    TEST",
    "ATOM      1  CA  GLY A   1      10.000   0.000   0.000  1.00 20.00           C",
    "ATOM      2  SG  CYS A   2     -10.000   0.000   0.000  1.00 20.00           S",
    "HETATM    3  O   HOH A   3       0.000  12.000   0.000  1.00 20.00           O",
    "ATOM      4  N   GLY A   4       0.000   0.000   5.000  1.00 20.00",
    "ENDMDL",
    "ATOM      5  CA  GLY A   1      99.000  99.000  99.000  1.00 20.00           C",
]


def write_pdb(path, lines=PDB_LINES):
    import gzip

    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_pdb_model_is_read_at_its_own_size_with_electron_weights(tmp_path):
    from cryoclass.simulation.phantoms import pdb_phantom, read_pdb_atoms

    path = write_pdb(tmp_path / "m.pdb.gz")
    coords, w = read_pdb_atoms(path)
    np.testing.assert_array_equal(coords, [[10, 0, 0], [-10, 0, 0], [0, 12, 0], [0, 0, 5]])
    np.testing.assert_array_equal(w, [6, 16, 8, 7])  # C, S, O; N from the atom name
    ph = pdb_phantom(path)
    assert ph.name == "pdb:m"
    np.testing.assert_allclose((ph.weight[:, None] * ph.coords_A).sum(axis=0), 0, atol=1e-9)
    centre = (w[:, None] * coords).sum(axis=0) / w.sum()
    np.testing.assert_allclose(ph.coords_A, coords - centre)  # not scaled to any diameter
    with pytest.raises(InputError, match="no ATOM"):
        read_pdb_atoms(write_pdb(tmp_path / "empty.pdb.gz", ["HEADER    NONE"]))


def test_pdb_model_projects_its_atoms_with_their_weights(tmp_path, monkeypatch):
    path = write_pdb(tmp_path / "m.pdb.gz")
    p = SimulationParams(n_particles=40, box_px=48, pixel_size_A=2.0, particle_diameter_A=40.0,
                         n_species=1, phantoms=(f"pdb:{path}",), views_per_species=0,
                         junk_fraction=0.0, duplicate_fraction=0.0, shift_sigma_px=0.0,
                         ctf=False)
    _, clean, t = simulate_images(p, noise=False)
    mass = clean.sum(axis=(1, 2))
    np.testing.assert_allclose(mass, mass.mean(), rtol=1e-3)  # every view holds all 37 e
    # at psi 0 and the identity view the sulphur (16 e at x = -10 A) is the brightest spot
    sim = Simulator(p, plan=False, scale=1.0)
    img = sim.clean_projection(0, np.eye(3)[None])[0]
    n = img.shape[0]
    y, x = np.unravel_index(np.argmax(img), img.shape)
    cx = -10.0 - (-10 * 16 + 10 * 6) / 37.0  # the atom's x relative to the centre of mass
    assert (x - n // 2) * 2.0 == pytest.approx(cx, abs=2.0) and abs(y - n // 2) <= 1
    # a relative path is stored absolute, so a truth file is read from anywhere
    monkeypatch.chdir(tmp_path)
    rel = SimulationParams(n_species=1, phantoms=("pdb:m.pdb.gz",), views_per_species=0)
    assert rel.phantoms[0] == f"pdb:{tmp_path / 'm.pdb.gz'}"
    with pytest.raises(InputError, match="not found"):
        SimulationParams(n_species=1, phantoms=("pdb:missing.pdb",), views_per_species=0)
