"""CryoSPARC's complete .cs slots, blob/sign on input, and location/* without micrographs.

The 42 fields of a real CryoSPARC 2D classification export, in its order and with its
dtypes, for particles written from STAR input; a .cs input's fields pass through
unchanged and gain the slots they lack; real per-particle E-step values where given,
CryoSPARC's neutral values otherwise; the "micrograph not found" warning once per run.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import cryoclass.io.particles as particles
from cryoclass.errors import InputError
from cryoclass.io import fields as F
from cryoclass.io.cs import read_cs, write_cs
from cryoclass.io.interop import write_class_averages_cs
from cryoclass.io.particles import load_particles, write_subset_cs
from test_io_particles import _align, _cs_array, _make_project, _particle_rows, _star31

# name -> (kind, itemsize or None for bytes, shape): a real 2D classification export
CRYOSPARC_2D_FIELDS = {
    "uid": ("u", 8, ()), "blob/path": ("S", None, ()), "blob/idx": ("u", 4, ()),
    "blob/shape": ("u", 4, (2,)), "blob/psize_A": ("f", 4, ()), "blob/sign": ("f", 4, ()),
    "blob/import_sig": ("u", 8, ()),
    "ctf/type": ("S", None, ()), "ctf/exp_group_id": ("u", 4, ()),
    **{f"ctf/{k}": ("f", 4, ()) for k in ("accel_kv", "cs_mm", "amp_contrast", "df1_A",
                                          "df2_A", "df_angle_rad", "phase_shift_rad",
                                          "scale", "scale_const")},
    "ctf/shift_A": ("f", 4, (2,)), "ctf/tilt_A": ("f", 4, (2,)),
    "ctf/trefoil_A": ("f", 4, (2,)), "ctf/tetra_A": ("f", 4, (4,)),
    "ctf/anisomag": ("f", 4, (4,)), "ctf/bfactor": ("f", 4, ()),
    "alignments2D/split": ("u", 4, ()), "alignments2D/shift": ("f", 4, (2,)),
    **{f"alignments2D/{k}": ("f", 4, ()) for k in (
        "pose", "psize_A", "error", "error_min", "resid_pow", "slice_pow", "image_pow",
        "cross_cor", "alpha", "alpha_min", "weight", "pose_ess", "shift_ess",
        "class_posterior")},
    "alignments2D/class": ("u", 4, ()), "alignments2D/class_ess": ("f", 4, ()),
}


def check_slots(arr: np.ndarray, spec: dict, exact_order: bool = False) -> None:
    names = [n for n in arr.dtype.names if not n.startswith("location/")]
    if exact_order:
        assert names == list(spec), names
    for name, (kind, size, shape) in spec.items():
        assert name in arr.dtype.names, f"no {name}"
        dt = arr.dtype[name]
        assert dt.base.kind == kind and dt.shape == shape, f"{name}: {dt}"
        assert size is None or dt.base.itemsize == size, f"{name}: {dt}"


@pytest.fixture
def project(tmp_path):
    images, rel = _make_project(tmp_path)
    picks, parts = _particle_rows(rel)
    return tmp_path, images, rel, picks, parts


def test_the_42_slots_from_star_input(project):
    root, _, _, _, parts = project
    table = load_particles(_star31(root, parts))
    out = root / "p.cs"
    write_subset_cs(out, table, None, _align(len(table)))
    arr = np.load(out, allow_pickle=False)  # the on-disk dtypes
    assert len(F.CS_PARTICLE_SLOTS) == 42 == len(CRYOSPARC_2D_FIELDS)
    check_slots(arr, CRYOSPARC_2D_FIELDS, exact_order=True)
    assert {n for n in arr.dtype.names if n.startswith("location/")} == {
        "location/micrograph_path", "location/micrograph_shape", "location/center_x_frac",
        "location/center_y_frac"}  # the micrographs' headers exist here
    np.testing.assert_array_equal(arr["blob/sign"], -1.0)  # RELION: light on dark
    np.testing.assert_array_equal(arr["ctf/exp_group_id"], [0, 1, 0, 1, 0, 1])  # optics - 1
    assert set(arr["ctf/type"]) == {b"imported"}
    np.testing.assert_array_equal(arr["ctf/scale"], 1.0)
    np.testing.assert_array_equal(arr["ctf/anisomag"], 0.0)
    np.testing.assert_array_equal(arr["alignments2D/error_min"], arr["alignments2D/error"])
    for name in ("alpha", "alpha_min", "weight", "pose_ess", "shift_ess"):  # neutral
        np.testing.assert_array_equal(arr[f"alignments2D/{name}"], 1.0)
    for name in ("image_pow", "cross_cor", "resid_pow", "slice_pow"):
        np.testing.assert_array_equal(arr[f"alignments2D/{name}"], 0.0)
    assert not any(np.isnan(arr[n]).any() for n in arr.dtype.names
                   if arr.dtype[n].kind == "f")
    # without an alignment (never classified): the blob and ctf slots
    write_subset_cs(root / "r.cs", table, [0, 2])
    bare = read_cs(root / "r.cs")
    check_slots(bare, {k: v for k, v in CRYOSPARC_2D_FIELDS.items()
                       if not k.startswith("alignments2D/")})


def test_real_estep_values_where_given(project):
    root, _, _, _, parts = project
    table = load_particles(_star31(root, parts))
    n = len(table)
    align = _align(n)
    given = {"image_pow": np.linspace(1, 2, n), "cross_cor": np.linspace(-1, 1, n),
             "alpha": np.full(n, 0.8), "pose_ess": np.full(n, 3.5), "error_min": -np.ones(n)}
    write_subset_cs(root / "p.cs", table, None, {**align, **given, "resid_pow": None})
    arr = read_cs(root / "p.cs")
    for key, values in given.items():
        np.testing.assert_allclose(arr[F.CS_OPTIONAL_ALIGN[key]], values, rtol=1e-6)
    np.testing.assert_array_equal(arr["alignments2D/resid_pow"], 0.0)  # None: neutral
    np.testing.assert_array_equal(arr["alignments2D/alpha_min"], 1.0)
    with pytest.raises(ValueError, match="image_pow"):
        write_subset_cs(root / "q.cs", table, None, {**align, "image_pow": np.ones(n + 1)})


def test_cs_input_passes_through_and_gains_the_missing_slots(project):
    root, _, rel, picks, _ = project
    job = root / "J7"
    job.mkdir()
    src = _cs_array(root, rel, picks)
    extra = np.zeros(len(src), dtype=[("pick_stats/ncc_score", "<f4")])
    extra["pick_stats/ncc_score"] = np.arange(len(src))
    src = particles.with_fields(src, {"pick_stats/ncc_score": extra["pick_stats/ncc_score"]})
    write_cs(job / "particles.cs", src)
    table = load_particles(job / "particles.cs")
    write_subset_cs(root / "out.cs", table, None, _align(len(table)))
    out = np.load(root / "out.cs", allow_pickle=False)
    inp = np.load(job / "particles.cs", allow_pickle=False)
    for name in inp.dtype.names:
        if name.startswith("alignments2D/"):  # this run's alignments replace the input's
            continue
        assert out.dtype[name] == inp.dtype[name], name
        np.testing.assert_array_equal(out[name], inp[name], err_msg=name)
    assert list(out.dtype.names[:len(inp.dtype.names)]) == list(inp.dtype.names)
    check_slots(out, CRYOSPARC_2D_FIELDS)


def test_blob_sign_is_honoured_on_input(project):
    """+1 (dark protein) images are read negated; -1 (light on dark) as stored."""
    root, images, rel, picks, _ = project
    job = root / "J8"
    job.mkdir()
    arr = _cs_array(root, rel, picks)
    arr["blob/sign"] = [1, -1, 1, -1, 1, -1]
    write_cs(job / "particles.cs", arr)
    table = load_particles(job / "particles.cs")
    got = table.image_source().read(np.arange(6))
    want = np.stack([images[s][i] for s, i in picks])
    np.testing.assert_array_equal(got, want * np.array([-1, 1, -1, 1, -1, 1])[:, None, None])
    write_subset_cs(root / "o.cs", table, None, _align(6))  # passed through as read
    np.testing.assert_array_equal(read_cs(root / "o.cs")["blob/sign"], arr["blob/sign"])
    arr["blob/sign"][2] = 0.5
    write_cs(job / "bad.cs", arr)
    with pytest.raises(InputError, match="row 3: blob/sign is 0.5"):
        load_particles(job / "bad.cs")


def test_class_averages_cs_blob_slots(tmp_path):
    write_class_averages_cs(tmp_path / "c.cs", tmp_path / "c.mrcs", 48, 2.0,
                            np.array([8.0, np.inf, 12.0]))
    arr = np.load(tmp_path / "c.cs", allow_pickle=False)
    spec = {k: v for k, v in CRYOSPARC_2D_FIELDS.items() if k.startswith(("uid", "blob/"))}
    check_slots(arr, {**spec, "blob/res_A": ("f", 4, ())})
    assert list(arr.dtype.names) == [*spec, "blob/res_A"]
    np.testing.assert_array_equal(arr["blob/sign"], -1.0)


def test_missing_micrographs_warned_once_and_user_shape(project, caplog, monkeypatch):
    root, _, _, _, parts = project
    for p in (root / "MotionCorr").iterdir():
        p.unlink()  # the micrographs are gone (a STAR file away from its project)
    star = _star31(root, parts)
    monkeypatch.setattr(particles, "_REPORTED_MISSING", set())
    caplog.set_level(logging.WARNING, logger="cryoclass")
    table = load_particles(star)
    for name in ("a.cs", "b.cs", "c.cs"):  # particles, rejected duplicates, a selection
        write_subset_cs(root / name, table, [0, 1], _align(len(table)))
    sub = particles.subset_table(table, np.array([0, 2, 4]))
    write_subset_cs(root / "d.cs", sub, None)
    said = [r for r in caplog.records if "no location/* fields" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert "location/micrograph_shape" not in read_cs(root / "a.cs").dtype.names
    # the user gives the micrograph shape: location/* are written anyway
    table = load_particles(star)
    table.micrograph_shape_px = (40, 60)
    write_subset_cs(root / "e.cs", table, None)
    arr = read_cs(root / "e.cs")
    np.testing.assert_array_equal(arr["location/micrograph_shape"], np.tile([40, 60], (6, 1)))
    np.testing.assert_allclose(arr["location/center_x_frac"] * 60, parts["rlnCoordinateX"],
                               rtol=1e-6)


def test_cs_input_micrograph_shape_without_the_micrographs(project):
    """A .cs input carries location/micrograph_shape: its location/* survive, and a .cs
    written from its STAR conversion's table keeps using that shape."""
    root, _, rel, picks, _ = project
    for p in (root / "MotionCorr").iterdir():
        p.unlink()
    job = root / "J9"
    job.mkdir()
    write_cs(job / "particles.cs", _cs_array(root, rel, picks))
    table = load_particles(job / "particles.cs")
    np.testing.assert_array_equal(table.meta[F.MICROGRAPH_NY_PX], 40)
    table.cs_array = None  # as a writer without the input array would see it
    write_subset_cs(root / "m.cs", table, None)
    arr = read_cs(root / "m.cs")
    np.testing.assert_array_equal(arr["location/micrograph_shape"], np.tile([40, 60], (6, 1)))
    np.testing.assert_allclose(arr["location/center_x_frac"], 0.25)

