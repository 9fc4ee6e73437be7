"""Particle tables: loading STAR 3.0/3.1 and .cs, bad input, and the output writers."""

import os

import numpy as np
import pandas as pd
import pytest

from cryoclass.errors import InputError
from cryoclass.io import fields as F
from cryoclass.io.cs import read_cs, write_cs
from cryoclass.io.mrc import write_image, write_stack
from cryoclass.io.particles import (
    load_particles,
    write_particles_cs,
    write_particles_star,
    write_subset_cs,
    write_subset_star,
)
from cryoclass.io.star import read_star, write_star

BOX = 12
N_PER_STACK = (5, 4)


def _images(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, BOX, BOX)).astype(np.float32) for n in N_PER_STACK]


def _make_project(root, box=BOX):
    """Stacks and micrographs in a RELION-like project; returns (images, stack rel paths)."""
    images = _images(0)
    rel = []
    for k, data in enumerate(images):
        r = f"Extract/job005/mic{k}.mrcs"
        if box != BOX and k == 1:
            data = np.zeros((len(data), box, box), np.float32)
        write_stack(root / r, data, 1.5)
        write_image(root / f"MotionCorr/mic{k}.mrc", np.zeros((40, 60), np.float32), 1.5)
        rel.append(r)
    return images, rel


def _particle_rows(rel):
    # 6 particles in a scrambled order across both stacks
    picks = [(1, 3), (0, 0), (0, 4), (1, 0), (0, 2), (1, 1)]
    n = len(picks)
    return picks, pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{rel[s]}" for s, i in picks],
        "rlnMicrographName": [f"MotionCorr/mic{s}.mrc" for s, _ in picks],
        "rlnCoordinateX": np.arange(n) * 10.0 + 5,
        "rlnCoordinateY": np.arange(n) * 3.0 + 7,
        "rlnDefocusU": 10000.0 + np.arange(n) * 100,
        "rlnDefocusV": 9000.0 + np.arange(n) * 100,
        "rlnDefocusAngle": np.full(n, 30.0),
        "rlnPhaseShift": np.zeros(n),
        "rlnCtfBfactor": np.zeros(n),
        "rlnAutopickFigureOfMerit": np.linspace(0, 1, n),
        "rlnClassNumber": np.full(n, 9),
    })


def _star31(folder, parts, name="particles.star"):
    parts = parts.copy()
    parts["rlnOpticsGroup"] = [1, 2, 1, 2, 1, 2]
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
        "rlnOpticsGroup": [1, 2],
        "rlnImagePixelSize": [1.5, 1.5],
        "rlnImageSize": [BOX, BOX],
        "rlnImageDimensionality": [2, 2],
        "rlnVoltage": [300.0, 200.0],
        "rlnSphericalAberration": [2.7, 2.7],
        "rlnAmplitudeContrast": [0.1, 0.07],
    })
    path = folder / name
    write_star(path, {"optics": optics, "particles": parts})
    return path


def _star30(folder, parts, name="particles30.star"):
    parts = parts.copy()
    parts["rlnVoltage"] = 300.0
    parts["rlnSphericalAberration"] = 2.7
    parts["rlnAmplitudeContrast"] = 0.1
    parts["rlnMagnification"] = 10000.0
    parts["rlnDetectorPixelSize"] = 1.5  # um -> 1.5 A/px
    parts["rlnOriginX"] = 2.0  # px
    parts["rlnOriginY"] = -1.0
    path = folder / name
    write_star(path, {"": parts})
    return path


@pytest.fixture
def project(tmp_path):
    images, rel = _make_project(tmp_path)
    picks, parts = _particle_rows(rel)
    return tmp_path, images, rel, picks, parts


def _align(n, seed=5):
    rng = np.random.default_rng(seed)
    return {
        "class_index": rng.integers(0, 4, n),
        "psi_deg": rng.uniform(0, 360, n),
        "shift_x_A": rng.uniform(-5, 5, n),
        "shift_y_A": rng.uniform(-5, 5, n),
        "class_posterior": rng.uniform(0.5, 1, n),
        "ess": rng.uniform(0.2, 4, n),
        "best_class_prob": rng.uniform(0.5, 1, n),
        "score": rng.normal(size=n),
        "half_set": np.arange(n) % 2,
    }


# --- loading ----------------------------------------------------------------------------


def test_load_star31(project):
    root, images, rel, picks, parts = project
    table = load_particles(_star31(root, parts))
    meta = table.meta
    assert len(table) == 6 and table.source_format == "star" and table.box_px == BOX
    assert list(meta.columns) == list(F.CANONICAL_COLUMNS)
    assert meta["image_path"].tolist() == [os.path.normpath(root / rel[s]) for s, _ in picks]
    assert meta["image_index"].dtype == np.int64
    assert meta["image_index"].tolist() == [i for _, i in picks]
    np.testing.assert_allclose(meta["defocus_angle_rad"], np.deg2rad(30.0))
    np.testing.assert_allclose(meta["voltage_kv"], [300, 200, 300, 200, 300, 200])
    np.testing.assert_allclose(meta["amplitude_contrast"], [0.1, 0.07] * 3)
    assert (meta["pixel_size_A"] == 1.5).all()
    assert table.has_ctf and table.has_locations
    assert meta["location_x_px"].tolist() == parts["rlnCoordinateX"].tolist()
    assert (meta["input_origin_x_A"] == 0).all()
    got = table.image_source().read(np.arange(6))
    np.testing.assert_array_equal(got, np.stack([images[s][i] for s, i in picks]))


def test_load_star30_magnification_and_pixel_origin(project):
    root, _, _, _, parts = project
    table = load_particles(_star30(root, parts))
    meta = table.meta
    assert table.particles_block == ""
    np.testing.assert_allclose(meta["pixel_size_A"], 1.5)
    np.testing.assert_allclose(meta["input_origin_x_A"], 3.0)
    np.testing.assert_allclose(meta["input_origin_y_A"], -1.5)
    np.testing.assert_allclose(meta["voltage_kv"], 300.0)


def test_relative_paths_star_folder_project_parent_and_explicit(project, tmp_path_factory):
    root, _, rel, _, parts = project
    # stacks relative to the STAR file's own folder
    local = parts.copy()
    local["rlnImageName"] = local["rlnImageName"].str.replace("Extract/job005/", "", regex=False)
    table = load_particles(_star31(root / "Extract" / "job005", local))
    assert table.meta["image_path"].iloc[0] == os.path.normpath(root / rel[1])
    # RELION project layout: STAR two levels down, names relative to the project dir
    star = _star31(root / "Select" / "job010", parts)
    table = load_particles(star)
    assert table.meta["image_path"].iloc[0] == os.path.normpath(root / rel[1])
    assert table.base_dir == str(root)
    # explicit project_dir wins; a wrong one gives a clear error
    other = tmp_path_factory.mktemp("elsewhere")
    star2 = _star31(other, parts)
    assert load_particles(star2, project_dir=str(root)).meta["image_path"].iloc[0] == \
        os.path.normpath(root / rel[1])
    with pytest.raises(InputError, match=r"mic1\.mrcs: image stack not found.*resolved "
                                         r"against"):
        load_particles(star2)


def test_written_star_elsewhere_finds_the_input_stacks(project, tmp_path_factory):
    """A selection written outside the project (run1/select/selected.star) keeps the image
    names unchanged for RELION and records where they were found, so cryoclass reads it
    back from any working directory (a second classification round)."""
    root, images, rel, picks, parts = project
    table = load_particles(_star31(root / "Select" / "job010", parts))
    away = tmp_path_factory.mktemp("run1") / "select"
    write_subset_star(away / "selected.star", table, [4, 1])
    text = (away / "selected.star").read_text()
    assert text.startswith(f"# cryoclass: relative image paths were resolved against {root}\n")
    got = read_star(away / "selected.star")["particles"]["rlnImageName"].tolist()
    assert got == [parts["rlnImageName"].iloc[4], parts["rlnImageName"].iloc[1]]  # unchanged
    again = load_particles(away / "selected.star")
    assert again.base_dir == str(root)
    np.testing.assert_array_equal(again.image_source().read(np.arange(2)),
                                  np.stack([images[s][i] for s, i in (picks[4], picks[1])]))


def _cs_array(root, rel, picks, shift=True):
    n = len(picks)
    dtype = [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"),
             ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"), ("blob/sign", "<f4"),
             ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
             ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
             ("ctf/phase_shift_rad", "<f4"), ("location/micrograph_path", "S64"),
             ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"),
             ("location/micrograph_shape", "<u4", (2,))]
    if shift:
        dtype += [("alignments2D/shift", "<f4", (2,)), ("alignments2D/psize_A", "<f4")]
    arr = np.zeros(n, dtype=dtype)
    arr["uid"] = np.arange(n) + 1000
    arr["blob/path"] = [(">" if k == 0 else "") .encode() + rel[s].encode()
                        for k, (s, _) in enumerate(picks)]
    arr["blob/idx"] = [i for _, i in picks]
    arr["blob/shape"] = BOX
    arr["blob/psize_A"] = 1.5
    arr["blob/sign"] = -1
    arr["ctf/accel_kv"] = 300
    arr["ctf/cs_mm"] = 2.7
    arr["ctf/amp_contrast"] = 0.1
    arr["ctf/df1_A"] = 10000 + np.arange(n) * 100
    arr["ctf/df2_A"] = 9000 + np.arange(n) * 100
    arr["ctf/df_angle_rad"] = 0.5
    arr["location/micrograph_path"] = [f"MotionCorr/mic{s}.mrc".encode() for s, _ in picks]
    arr["location/micrograph_shape"] = (40, 60)  # [ny, nx]
    arr["location/center_x_frac"] = 0.25
    arr["location/center_y_frac"] = 0.5
    if shift:
        arr["alignments2D/shift"] = (2.0, -1.0)
        arr["alignments2D/psize_A"] = 1.5
    return arr


def test_load_cs(project):
    root, images, rel, picks, _ = project
    job = root / "J7"
    job.mkdir()
    write_cs(job / "particles.cs", _cs_array(root, rel, picks))
    table = load_particles(job / "particles.cs")  # paths relative to the project (parent)
    meta = table.meta
    assert table.source_format == "cs" and table.box_px == BOX and table.has_locations
    assert meta["image_path"].tolist() == [os.path.normpath(root / rel[s]) for s, _ in picks]
    assert meta["image_index"].tolist() == [i for _, i in picks]
    np.testing.assert_allclose(meta["location_x_px"], 0.25 * 60)
    np.testing.assert_allclose(meta["location_y_px"], 0.5 * 40)
    np.testing.assert_allclose(meta["defocus_angle_rad"], 0.5)
    assert meta["micrograph"].iloc[0] == "MotionCorr/mic1.mrc"
    np.testing.assert_allclose(meta["input_origin_x_A"], 3.0)
    np.testing.assert_allclose(meta["input_origin_y_A"], -1.5)
    got = table.image_source().read([1, 0])
    np.testing.assert_array_equal(got, np.stack([images[0][0], images[1][3]]))
    # explicit project_dir
    assert load_particles(job / "particles.cs", project_dir=str(root)).box_px == BOX


# --- bad input --------------------------------------------------------------------------


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_particles(tmp_path / "x.star")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match=r"unknown particle file type '\.txt'"):
        load_particles(tmp_path / "x.txt")


def test_missing_stack_index_past_end_truncated(project):
    root, _, rel, _, parts = project
    bad = parts.copy()
    bad.loc[2, "rlnImageName"] = "000001@Extract/job005/gone.mrcs"
    with pytest.raises(InputError, match=r"gone\.mrcs: image stack not found.*particle row 3"):
        load_particles(_star31(root, bad, "a.star"))
    bad = parts.copy()
    bad.loc[4, "rlnImageName"] = f"000006@{rel[0]}"
    with pytest.raises(InputError, match=r"mic0\.mrcs: particle row 5 asks for image 6.*holds 5"):
        load_particles(_star31(root, bad, "b.star"))
    star = _star31(root, parts, "c.star")
    path = root / rel[1]
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 10)
    with pytest.raises(InputError, match=r"mic1\.mrcs: truncated MRC file"):
        load_particles(star)
    assert load_particles(star, check_images=False).box_px == BOX  # from rlnImageSize


def test_nan_pixels(tmp_path):
    data = np.ones((3, BOX, BOX), np.float32)
    data[1, 2, 2] = np.nan
    write_stack(tmp_path / "s.mrcs", data, 1.0)
    parts = pd.DataFrame({"rlnImageName": ["1@s.mrcs", "2@s.mrcs"], "rlnPixelSize": [1.0, 1.0]})
    write_star(tmp_path / "p.star", {"particles": parts})
    table = load_particles(tmp_path / "p.star", ctf=False)
    src = table.image_source()
    assert src.read([0]).shape == (1, BOX, BOX)
    with pytest.raises(InputError, match=r"s\.mrcs: image 2 .*particle row 2.*NaN"):
        src.read([0, 1])


def test_star_without_image_name_or_pixel_size(project):
    root, _, _, _, parts = project
    write_star(root / "noimg.star", {"particles": parts.drop(columns=["rlnImageName"])})
    with pytest.raises(InputError, match=r"noimg\.star: data_particles has no _rlnImageName"):
        load_particles(root / "noimg.star")
    write_star(root / "nops.star", {"particles": parts})
    with pytest.raises(InputError, match=r"no pixel size; add _rlnImagePixelSize"):
        load_particles(root / "nops.star")
    write_star(root / "blocks.star", {"optics": pd.DataFrame({"a": [1]}),
                                      "foo": pd.DataFrame({"b": [1]}),
                                      "bar": pd.DataFrame({"c": [1]})})
    with pytest.raises(InputError, match="no particle block"):
        load_particles(root / "blocks.star")


def test_unknown_optics_group(project):
    root, _, _, _, parts = project
    star = _star31(root, parts)
    blocks = read_star(star)
    blocks["particles"].loc[3, "rlnOpticsGroup"] = 7
    write_star(star, blocks)
    with pytest.raises(InputError, match="particle row 4 has _rlnOpticsGroup 7"):
        load_particles(star)


def test_missing_ctf_columns_and_ctf_off(project):
    root, _, rel, picks, parts = project
    no_ctf = parts.drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"])
    star = _star31(root, no_ctf, "noctf.star")
    with pytest.raises(InputError) as err:
        load_particles(star)
    msg = str(err.value)
    assert "_rlnDefocusU" in msg and "_rlnDefocusAngle" in msg and "(--no-ctf)" in msg
    table = load_particles(star, ctf=False)
    meta = table.meta
    assert not table.has_ctf
    assert (meta["amplitude_contrast"] == 1).all() and (meta["defocus_u_A"] == 0).all()
    assert (meta["defocus_v_A"] == 0).all() and (meta["cs_mm"] == 0).all()
    assert (meta["phase_shift_rad"] == 0).all()
    np.testing.assert_allclose(meta["voltage_kv"], [300, 200] * 3)
    # .cs without CTF fields
    arr = _cs_array(root, rel, picks)
    keep = [n for n in arr.dtype.names if not n.startswith("ctf/")]
    write_cs(root / "noctf.cs", arr[keep])
    with pytest.raises(InputError, match=r"ctf/df1_A.*--no-ctf"):
        load_particles(root / "noctf.cs")
    meta = load_particles(root / "noctf.cs", ctf=False).meta
    assert (meta["amplitude_contrast"] == 1).all() and (meta["voltage_kv"] == 300).all()


def test_mixed_box_sizes(tmp_path):
    _, rel = _make_project(tmp_path, box=BOX + 4)
    _, parts = _particle_rows(rel)
    with pytest.raises(InputError, match=r"mixed box sizes.*mic1\.mrcs has 16x16"):
        load_particles(_star31(tmp_path, parts))


def test_cs_without_blob_path(tmp_path):
    write_cs(tmp_path / "x.cs", np.zeros(2, dtype=[("uid", "<u8"), ("ctf/df1_A", "<f4")]))
    with pytest.raises(InputError, match="no blob/path field"):
        load_particles(tmp_path / "x.cs")


# --- writers ----------------------------------------------------------------------------


def test_write_star_keeps_columns_order_and_adds_alignment(project):
    root, _, _, _, parts = project
    table = load_particles(_star31(root, parts))
    align = _align(len(table))
    out = root / "run" / "particles.star"
    write_particles_star(out, table, align)
    blocks = read_star(out)
    assert list(blocks) == ["optics", "particles"]
    pd.testing.assert_frame_equal(blocks["optics"], table.star_blocks["optics"])
    got = blocks["particles"]
    inp = table.star_blocks["particles"]
    assert list(got.columns[: len(inp.columns)]) == list(inp.columns)
    assert got["rlnImageName"].tolist() == inp["rlnImageName"].tolist()
    np.testing.assert_allclose(got["rlnAutopickFigureOfMerit"], inp["rlnAutopickFigureOfMerit"])
    assert got["rlnClassNumber"].tolist() == (align["class_index"] + 1).tolist()  # overwritten
    np.testing.assert_allclose(got["rlnAnglePsi"], align["psi_deg"], atol=1e-6)
    np.testing.assert_allclose(got["rlnOriginXAngst"], -align["shift_x_A"], atol=1e-6)
    np.testing.assert_allclose(got["rlnOriginYAngst"], -align["shift_y_A"], atol=1e-6)
    np.testing.assert_allclose(got["rlnMaxValueProbDistribution"], align["best_class_prob"],
                               atol=1e-6)
    assert got["rlnNrOfSignificantSamples"].dtype == np.int64
    assert got["rlnNrOfSignificantSamples"].tolist() == \
        np.maximum(1, np.rint(align["ess"])).astype(int).tolist()
    np.testing.assert_allclose(got["rlnLogLikeliContribution"], align["score"], atol=1e-6)
    np.testing.assert_allclose(got["rlnDefocusU"], inp["rlnDefocusU"])


def test_write_star_from_relion30_builds_optics(project):
    root, _, _, _, parts = project
    table = load_particles(_star30(root, parts))
    align = _align(len(table))
    write_particles_star(root / "out.star", table, align)
    blocks = read_star(root / "out.star")
    optics, got = blocks["optics"], blocks["particles"]
    assert len(optics) == 1
    assert optics["rlnImagePixelSize"].iloc[0] == 1.5 and optics["rlnImageSize"].iloc[0] == BOX
    assert optics["rlnVoltage"].iloc[0] == 300 and optics["rlnAmplitudeContrast"].iloc[0] == 0.1
    assert (got["rlnOpticsGroup"] == 1).all()
    for col in table.star_blocks[""].columns:
        assert col in got.columns
    # the 3.0 pixel origin is kept consistent with the new Angstrom origin
    np.testing.assert_allclose(got["rlnOriginX"], -align["shift_x_A"] / 1.5, atol=1e-6)
    # and the file reads back as the same particles
    again = load_particles(root / "out.star")
    pd.testing.assert_series_equal(again.meta["image_path"], table.meta["image_path"])
    np.testing.assert_allclose(again.meta["input_origin_x_A"], -align["shift_x_A"], atol=1e-5)


def test_write_ctf_off_values(project):
    root, _, rel, picks, parts = project
    table = load_particles(_star31(root, parts), ctf=False)
    write_particles_star(root / "off.star", table, _align(6))  # default: not table.has_ctf
    blocks = read_star(root / "off.star")
    got, optics = blocks["particles"], blocks["optics"]
    assert (got["rlnDefocusU"] == 0).all() and (got["rlnDefocusV"] == 0).all()
    assert (got["rlnDefocusAngle"] == 0).all() and (got["rlnPhaseShift"] == 0).all()
    assert (optics["rlnAmplitudeContrast"] == 1).all()
    assert (optics["rlnSphericalAberration"] == 0).all()
    # explicit flag on a CTF-on table, .cs output
    table = load_particles(_star31(root, parts))
    align = dict(_align(6), ctf_off=True)
    write_particles_cs(root / "off.cs", table, align)
    arr = read_cs(root / "off.cs")
    assert (arr["ctf/df1_A"] == 0).all() and (arr["ctf/amp_contrast"] == 1).all()
    assert (arr["ctf/cs_mm"] == 0).all() and (arr["ctf/phase_shift_rad"] == 0).all()


def test_write_cs_from_cs_keeps_fields_and_signs(project):
    root, _, rel, picks, _ = project
    job = root / "J7"
    job.mkdir()
    source = _cs_array(root, rel, picks)
    write_cs(job / "particles.cs", source)
    table = load_particles(job / "particles.cs")
    align = _align(6)
    write_particles_cs(root / "out.cs", table, align)
    arr = read_cs(root / "out.cs")
    for name in source.dtype.names:
        if not name.startswith("alignments2D/"):
            np.testing.assert_array_equal(arr[name], source[name])
    assert arr["alignments2D/class"].dtype == np.uint32
    assert arr["alignments2D/class"].tolist() == align["class_index"].tolist()
    np.testing.assert_allclose(arr["alignments2D/pose"], np.deg2rad(align["psi_deg"]), rtol=1e-6)
    assert arr["alignments2D/shift"].shape == (6, 2) and arr.dtype["alignments2D/shift"].base == \
        np.float32
    np.testing.assert_allclose(arr["alignments2D/shift"][:, 0], -align["shift_x_A"] / 1.5,
                               rtol=1e-5)
    np.testing.assert_allclose(arr["alignments2D/shift"][:, 1], -align["shift_y_A"] / 1.5,
                               rtol=1e-5)
    np.testing.assert_allclose(arr["alignments2D/psize_A"], 1.5)
    np.testing.assert_allclose(arr["alignments2D/class_posterior"], align["class_posterior"],
                               rtol=1e-6)
    np.testing.assert_allclose(arr["alignments2D/class_ess"], align["ess"], rtol=1e-6)
    np.testing.assert_allclose(arr["alignments2D/error"], -align["score"], rtol=1e-6)
    assert arr["alignments2D/split"].tolist() == align["half_set"].tolist()
    # reading the output back gives the shifts as the input origin (RELION sign)
    again = load_particles(root / "out.cs", project_dir=str(root))
    np.testing.assert_allclose(again.meta["input_origin_x_A"], -align["shift_x_A"], atol=1e-5)


def test_cross_format_writers(project):
    root, images, rel, picks, parts = project
    star_table = load_particles(_star31(root, parts))
    align = _align(6)
    write_particles_cs(root / "from_star.cs", star_table, align)
    arr = read_cs(root / "from_star.cs")
    assert arr["uid"].dtype == np.uint64 and len(np.unique(arr["uid"])) == 6
    assert arr["blob/idx"].tolist() == [i for _, i in picks]
    assert (arr["blob/shape"] == BOX).all()
    np.testing.assert_allclose(arr["ctf/df_angle_rad"], np.deg2rad(30.0), rtol=1e-6)
    np.testing.assert_allclose(arr["location/center_x_frac"] * 60, parts["rlnCoordinateX"],
                               rtol=1e-5)
    assert arr["location/micrograph_shape"].tolist()[0] == [40, 60]
    cs_table = load_particles(root / "from_star.cs")
    np.testing.assert_array_equal(cs_table.image_source().read(np.arange(6)),
                                  star_table.image_source().read(np.arange(6)))
    np.testing.assert_allclose(cs_table.meta["defocus_u_A"], star_table.meta["defocus_u_A"])
    # and back to STAR
    write_particles_star(root / "from_cs.star", cs_table, align)
    back = load_particles(root / "from_cs.star")
    pd.testing.assert_series_equal(back.meta["image_path"], star_table.meta["image_path"])
    np.testing.assert_allclose(back.meta["defocus_v_A"], star_table.meta["defocus_v_A"])
    np.testing.assert_allclose(back.meta["location_x_px"], star_table.meta["location_x_px"],
                               rtol=1e-5)
    np.testing.assert_allclose(read_star(root / "from_cs.star")["particles"]["rlnAnglePsi"],
                               align["psi_deg"], atol=1e-6)


def test_subset_writers(project):
    root, _, rel, picks, parts = project
    table = load_particles(_star31(root, parts))
    rows = [4, 1, 1]
    write_subset_star(root / "sub.star", table, rows)
    got = read_star(root / "sub.star")["particles"]
    assert got["rlnImageName"].tolist() == parts["rlnImageName"].iloc[rows].tolist()
    assert got["rlnClassNumber"].tolist() == [9, 9, 9]  # no align: input columns untouched
    align = _align(6)
    write_subset_star(root / "sub2.star", table, rows, align)
    got = read_star(root / "sub2.star")["particles"]
    np.testing.assert_allclose(got["rlnAnglePsi"], align["psi_deg"][rows], atol=1e-6)
    mask = np.zeros(6, bool)
    mask[[0, 5]] = True
    write_subset_cs(root / "sub.cs", table, mask, align)
    arr = read_cs(root / "sub.cs")
    assert arr["blob/idx"].tolist() == [picks[0][1], picks[5][1]]
    write_particles_cs(root / "all.cs", table, align)
    assert read_cs(root / "all.cs")["uid"][[0, 5]].tolist() == arr["uid"].tolist()  # same uids
    with pytest.raises(ValueError, match="shape"):
        write_particles_star(root / "x.star", table, dict(align, psi_deg=np.zeros(3)))
