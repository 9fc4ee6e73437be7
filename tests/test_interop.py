"""Interchange proven with the real tools: RELION 3.1 programs and cryosparc-tools.

One tiny run from a STAR file and one from a CryoSPARC-style .cs (relative blob/path,
--project-dir), both module-scoped. RELION programs run with the working directory set
to the project directory (the simulated data folder), as in a RELION project, because
our particles.star keeps the input's relative image names. Tests that need a tool skip
with the reason when it is missing; `make interop-tools` installs both.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest

from cryoclass.io import fields as F
from cryoclass.io.cs import read_cs, with_fields, write_cs
from cryoclass.io.interop import write_class_average_files
from cryoclass.io.particles import load_particles, write_subset_cs
from cryoclass.io.star import read_star

SRC = Path(__file__).resolve().parents[1] / "src"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
HAVE_RELION = all(shutil.which(p) for p in ("relion_star_handler", "relion_stack_create",
                                            "relion_refine"))
HAVE_CSTOOLS = importlib.util.find_spec("cryosparc") is not None
needs_relion = pytest.mark.skipif(
    not HAVE_RELION, reason="RELION 3.1 (relion_star_handler, relion_stack_create, "
                            "relion_refine) not on PATH; `make interop-tools` installs it")
needs_cstools = pytest.mark.skipif(
    not HAVE_CSTOOLS, reason="cryosparc-tools not installed; `make interop-tools` installs it")
pytestmark = pytest.mark.mpi

CLASSIFY_ARGS = ["--classes", "4", "--max-res", "12", "--online-iters", "3", "--final-iters", "1",
                 "--batch-per-class", "30", "--psi-step", "10",
                 "--set", "classify.anneal_iters=1", "--no-plots", "--no-progress"]
EXTRA_CS_FIELDS = {F.CS_BLOB_SIGN: np.float32(-1.0), F.CS_CTF_TYPE: b"imported",
                   F.CS_CTF_EXP_GROUP_ID: np.uint32(1)}  # CryoSPARC passthrough fields


def cryoclass(*args, cwd=None, ranks=1, timeout=300):
    cmd = [sys.executable, "-m", "cryoclass", *map(str, args)]
    if ranks > 1 and MPIEXEC.exists():
        cmd = [str(MPIEXEC), "-n", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def tool(*args, cwd, timeout=300):
    r = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """tmp/D: simulated project (stacks/ + particles.star with relative image names)."""
    base = tmp_path_factory.mktemp("interop")
    r = cryoclass("simulate", base / "D", "--n", "300", "--box", "48", "--pixel-size", "4.0",
                  "--seed", "3", cwd=base)
    assert r.returncode == 0, r.stderr[-3000:]
    return base


@pytest.fixture(scope="module")
def star_run(base):
    """tmp/R: classify D/particles.star under mpiexec -n 2."""
    r = cryoclass("classify", base / "D" / "particles.star", "--out", base / "R",
                  *CLASSIFY_ARGS, cwd=base, ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    run = base / "R"
    if not (run / "class_averages.star").exists():  # until outputs.py writes them itself
        write_class_average_files(run, project_dir=base / "D")
    return run


@pytest.fixture(scope="module")
def cs_input(base):
    """tmp/J5/particles.cs: CryoSPARC-style, blob/path relative to tmp/D (not found from J5).

    Written from the STAR table, with passthrough fields a CryoSPARC export carries; saved
    through cryosparc-tools' own writer when it is installed.
    """
    project = base / "D"
    table = load_particles(project / "particles.star")
    out = base / "J5" / "particles.cs"
    write_subset_cs(out, table, None)  # blob/*, ctf/*, no alignments
    arr = read_cs(out)
    rel = [os.path.relpath(p.decode(), project).encode() for p in arr[F.CS_BLOB_PATH]]
    extra = {k: np.full(len(arr), v) for k, v in EXTRA_CS_FIELDS.items()}
    write_cs(out, with_fields(arr, {F.CS_BLOB_PATH: np.array(rel), **extra}))
    if HAVE_CSTOOLS:
        from cryosparc.dataset import Dataset

        Dataset.load(out).save(out)
    return out


@pytest.fixture(scope="module")
def cs_run(base, cs_input):
    """tmp/RC: classify J5/particles.cs with --project-dir D under mpiexec -n 2."""
    r = cryoclass("classify", cs_input, "--project-dir", base / "D", "--out", base / "RC",
                  *CLASSIFY_ARGS, cwd=base, ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "RC"


def h5_particles(run: Path) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """run.h5 /particles, the rows written to particles.star/.cs, and the pixel size."""
    with h5py.File(run / "run.h5", "r") as f:
        p = {k: f["particles"][k][()] for k in f["particles"]}
        ps = float(f.attrs["pixel_size_A"])
    return p, np.flatnonzero(p["duplicate"] == 0), ps


def read_mrcs(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as m:
        return m.data.reshape(-1, m.data.shape[-2], m.data.shape[-1]).astype(np.float32)


# --- always: our own readers agree with the run ----------------------------------------------


def test_star_and_cs_outputs_match_run_h5(star_run):
    p, keep, ps = h5_particles(star_run)
    part = read_star(star_run / "particles.star")["particles"]
    cs = read_cs(star_run / "particles.cs")
    assert len(part) == len(cs) == keep.size
    np.testing.assert_array_equal(part[F.RLN_CLASS_NUMBER], p["class"][keep])
    np.testing.assert_allclose(part[F.RLN_ANGLE_PSI], p["psi_deg"][keep], atol=1e-4)
    np.testing.assert_allclose(part[F.RLN_ORIGIN_X_ANGST], -p["shift_x_A"][keep], atol=1e-4)
    np.testing.assert_array_equal(cs[F.CS_A2D_CLASS], p["class"][keep] - 1)
    np.testing.assert_allclose(cs[F.CS_A2D_SHIFT][:, 1], -p["shift_y_px"][keep], atol=1e-4)
    assert cs.dtype[F.CS_BLOB_PATH].kind == "S"  # fixed-length bytes on disk, as CryoSPARC
    # the best pose's fit from the final E-step (whitened powers; loglik = cross - slice / 2)
    image, resid = cs["alignments2D/image_pow"], cs["alignments2D/resid_pow"]
    cross, sl = cs["alignments2D/cross_cor"], cs["alignments2D/slice_pow"]
    assert np.all(image > 0) and np.all(sl > 0)
    np.testing.assert_allclose(resid, image - 2 * cross + sl, rtol=1e-3, atol=1e-3 * image.max())
    assert np.mean(cross - 0.5 * sl > 0) > 0.9  # the class explains most particles
    np.testing.assert_allclose(cs["alignments2D/alpha"], cross / sl, rtol=1e-5)


def test_class_average_reference_files(star_run):
    blocks = read_star(star_run / "class_averages.star")
    refs = blocks[F.STAR_BLOCK_MODEL_CLASSES]
    k = read_mrcs(star_run / "class_averages.mrcs").shape[0]
    stack = str(star_run / "class_averages.mrcs")
    assert list(refs[F.RLN_REFERENCE_IMAGE]) == [f"{i:06d}@{stack}" for i in range(1, k + 1)]
    assert refs[F.RLN_CLASS_DISTRIBUTION].sum() == pytest.approx(1.0, abs=1e-5)
    cls = read_cs(star_run / "class_averages.cs")
    np.testing.assert_array_equal(cls[F.CS_BLOB_IDX], np.arange(k))
    with h5py.File(star_run / "run.h5", "r") as f:
        np.testing.assert_allclose(cls[F.CS_BLOB_RES_A], f["classes/frc_res_A"][()], rtol=1e-6)


def test_cs_input_relative_paths_need_the_project_dir(base, cs_input):
    """From J5/ the relative blob/path is not found; the error says how to fix it."""
    r = cryoclass("classify", cs_input, "--out", base / "RV", "--validate-only", cwd=base)
    assert r.returncode != 0
    assert "not found" in r.stderr and "project directory" in r.stderr, r.stderr[-2000:]


def test_cs_input_with_project_dir_classifies(base, cs_input, cs_run):
    p, keep, _ = h5_particles(cs_run)
    out = read_cs(cs_run / "particles.cs")
    inp = read_cs(cs_input)
    assert len(out) == keep.size
    for name in inp.dtype.names:  # every input field kept, paths still project-relative
        np.testing.assert_array_equal(out[name], inp[name][keep], err_msg=name)
    assert not out[F.CS_BLOB_PATH][0].decode().startswith("/")
    np.testing.assert_array_equal(out[F.CS_A2D_CLASS], p["class"][keep] - 1)
    np.testing.assert_array_equal(np.unique(out[F.CS_A2D_CLASS]), np.arange(4))
    # the STAR written from .cs input names the stacks absolutely: readable from anywhere
    names = read_star(cs_run / "particles.star")["particles"][F.RLN_IMAGE_NAME]
    stack = names.iloc[0].partition("@")[2]
    assert os.path.isabs(stack) and Path(stack).is_file()


# --- RELION 3.1 ----------------------------------------------------------------------------


@needs_relion
def test_relion_star_handler_selects_our_classes(base, star_run, tmp_path):
    out = tmp_path / "sel.star"
    tool("relion_star_handler", "--i", star_run / "particles.star", "--o", out,
         "--select", "rlnClassNumber", "--minval", "1", "--maxval", "2", cwd=base / "D")
    ours = read_star(star_run / "particles.star")
    got = read_star(out)
    want = ours["particles"][ours["particles"][F.RLN_CLASS_NUMBER] <= 2]
    assert len(want) > 0
    assert list(got["particles"][F.RLN_IMAGE_NAME]) == list(want[F.RLN_IMAGE_NAME])
    np.testing.assert_allclose(got["particles"][F.RLN_ANGLE_PSI], want[F.RLN_ANGLE_PSI],
                               atol=1e-5)
    assert got["optics"][F.RLN_IMAGE_PIXEL_SIZE].iloc[0] == pytest.approx(4.0)


@needs_relion
@pytest.mark.parametrize("run", ["star_run", "cs_run"])
def test_relion_stack_create_reads_our_particles(base, run, request, tmp_path):
    """RELION finds every image our STAR names (relative from STAR input, absolute from .cs)."""
    run_dir = request.getfixturevalue(run)
    star = run_dir / "particles.star"
    tool("relion_stack_create", "--i", star, "--o", tmp_path / "s", cwd=base / "D")
    got = read_mrcs(tmp_path / "s.mrcs")
    table = load_particles(star, project_dir=str(base / "D"))
    want = table.image_source().read(np.arange(len(table)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_relion
def test_relion_refine_takes_our_class_averages_as_references(base, star_run, tmp_path):
    """One 2D iteration from class_averages.star (CTF-corrected references).

    RELION starts from exactly our class averages, and its assignments after one
    iteration mostly agree with ours: a check of the CTF, psi and origin conventions.
    """
    o = tmp_path / "run"
    tool("relion_refine", "--i", star_run / "particles.star",
         "--ref", star_run / "class_averages.star", "--ctf_corrected_ref", "--o", o,
         "--iter", "1", "--ctf", "--particle_diameter", "150", "--psi_step", "10",
         "--offset_range", "3", "--offset_step", "2", "--tau2_fudge", "2", "--zero_mask",
         "--j", "1", "--pool", "30", "--dont_combine_weights_via_disc", "--random_seed", "0",
         cwd=base / "D")
    ours = read_mrcs(star_run / "class_averages.mrcs")
    start = read_mrcs(tmp_path / "run_it000_classes.mrcs")
    np.testing.assert_allclose(start, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    model = read_star(tmp_path / "run_it001_model.star")
    assert int(model["model_general"]["rlnNrClasses"].iloc[0]) == ours.shape[0]

    a = read_star(star_run / "particles.star")["particles"]
    b = read_star(tmp_path / "run_it001_data.star")["particles"]
    assert list(a[F.RLN_IMAGE_NAME]) == list(b[F.RLN_IMAGE_NAME])
    same = a[F.RLN_CLASS_NUMBER].to_numpy() == b[F.RLN_CLASS_NUMBER].to_numpy()
    assert same.mean() >= 0.6, f"RELION agrees on the class of only {same.mean():.0%}"
    dpsi = (a[F.RLN_ANGLE_PSI] - b[F.RLN_ANGLE_PSI] + 180.0).to_numpy() % 360.0 - 180.0
    assert np.median(np.abs(dpsi[same])) < 10.0
    dorig = np.hypot(a[F.RLN_ORIGIN_X_ANGST] - b[F.RLN_ORIGIN_X_ANGST],
                     a[F.RLN_ORIGIN_Y_ANGST] - b[F.RLN_ORIGIN_Y_ANGST]).to_numpy()
    assert np.median(dorig[same]) < 2 * 4.0  # two pixels


# --- cryosparc-tools ---------------------------------------------------------------------------

# dtype kind, itemsize and shape CryoSPARC uses for each field (blob/path: bytes on disk)
CS_PARTICLE_FIELDS = {
    "uid": ("u", 8, ()), "blob/path": ("S", None, ()), "blob/idx": ("u", 4, ()),
    "blob/shape": ("u", 4, (2,)), "blob/psize_A": ("f", 4, ()),
    "ctf/accel_kv": ("f", 4, ()), "ctf/cs_mm": ("f", 4, ()), "ctf/amp_contrast": ("f", 4, ()),
    "ctf/df1_A": ("f", 4, ()), "ctf/df2_A": ("f", 4, ()), "ctf/df_angle_rad": ("f", 4, ()),
    "ctf/phase_shift_rad": ("f", 4, ()),
    "alignments2D/class": ("u", 4, ()), "alignments2D/pose": ("f", 4, ()),
    "alignments2D/shift": ("f", 4, (2,)), "alignments2D/psize_A": ("f", 4, ()),
    "alignments2D/class_posterior": ("f", 4, ()), "alignments2D/class_ess": ("f", 4, ()),
    "alignments2D/error": ("f", 4, ()), "alignments2D/split": ("u", 4, ()),
}
CS_CLASS_FIELDS = {
    "uid": ("u", 8, ()), "blob/path": ("S", None, ()), "blob/idx": ("u", 4, ()),
    "blob/shape": ("u", 4, (2,)), "blob/psize_A": ("f", 4, ()), "blob/res_A": ("f", 4, ()),
}


def check_fields(path: Path, spec: dict) -> None:
    raw = np.load(path, allow_pickle=False)  # the on-disk dtypes
    for name, (kind, size, shape) in spec.items():
        assert name in raw.dtype.names, f"{path.name}: no {name}"
        dt = raw.dtype[name]
        assert dt.base.kind == kind and dt.shape == shape, f"{name}: {dt}"
        assert size is None or dt.base.itemsize == size, f"{name}: {dt}"


@needs_cstools
def test_cryosparc_tools_loads_particles_cs(base, star_run):
    from cryosparc.dataset import Dataset

    path = star_run / "particles.cs"
    check_fields(path, CS_PARTICLE_FIELDS)
    d = Dataset.load(path)
    p, keep, ps = h5_particles(star_run)
    assert len(d) == keep.size
    np.testing.assert_array_equal(d["alignments2D/class"], p["class"][keep] - 1)
    pose = d["alignments2D/pose"]
    assert np.abs(pose).max() <= np.pi + 1e-6  # radians
    np.testing.assert_allclose(pose, np.deg2rad(p["psi_deg"][keep]), atol=1e-5)
    shift = d["alignments2D/shift"]  # px, (x, y), RELION origin sign (docs/formats.md §3)
    np.testing.assert_allclose(shift[:, 0], -p["shift_x_px"][keep], atol=1e-4)
    np.testing.assert_allclose(shift[:, 1], -p["shift_y_px"][keep], atol=1e-4)
    np.testing.assert_allclose(d["alignments2D/psize_A"], ps)
    np.testing.assert_allclose(d["alignments2D/class_posterior"],
                               p["class_posterior"][keep], rtol=1e-6)
    np.testing.assert_allclose(d["alignments2D/class_ess"], p["ess"][keep], rtol=1e-6)
    np.testing.assert_allclose(d["alignments2D/error"], -p["score"][keep], rtol=1e-5)
    np.testing.assert_array_equal(d["alignments2D/split"], p["half_set"][keep])
    # the blobs are the STAR's images, with the STAR's CTF
    part = read_star(star_run / "particles.star")["particles"]
    idx, _, stack = part[F.RLN_IMAGE_NAME].str.partition("@").T.to_numpy()
    np.testing.assert_array_equal(d["blob/idx"], idx.astype(int) - 1)
    assert [os.path.relpath(s, base / "D") for s in d["blob/path"]] == list(stack)
    np.testing.assert_array_equal(d["blob/shape"], np.tile([48, 48], (len(d), 1)))
    np.testing.assert_allclose(d["ctf/df1_A"], part[F.RLN_DEFOCUS_U], rtol=1e-6)
    np.testing.assert_allclose(d["ctf/df_angle_rad"], np.deg2rad(part[F.RLN_DEFOCUS_ANGLE]),
                               atol=1e-6)


@needs_cstools
def test_cryosparc_tools_loads_class_averages_cs(star_run):
    from cryosparc import mrc
    from cryosparc.dataset import Dataset

    path = star_run / "class_averages.cs"
    check_fields(path, CS_CLASS_FIELDS)
    d = Dataset.load(path)
    ours = read_mrcs(star_run / "class_averages.mrcs")
    assert len(d) == ours.shape[0]
    np.testing.assert_array_equal(d["blob/idx"], np.arange(len(d)))
    header, data = mrc.read(d["blob/path"][0])  # CryoSPARC's own MRC reader
    np.testing.assert_array_equal(np.asarray(data).reshape(ours.shape)[d["blob/idx"]], ours)
    assert header.xlen / header.nx == pytest.approx(float(d["blob/psize_A"][0]))
    with h5py.File(star_run / "run.h5", "r") as f:
        np.testing.assert_allclose(d["blob/res_A"], f["classes/frc_res_A"][()], rtol=1e-6)


@needs_cstools
def test_cryosparc_tools_loads_cs_run_output_and_reads_our_star(cs_run, star_run):
    from cryosparc import star
    from cryosparc.dataset import Dataset

    d = Dataset.load(cs_run / "particles.cs")
    check_fields(cs_run / "particles.cs", CS_PARTICLE_FIELDS)
    assert set(EXTRA_CS_FIELDS) <= set(d.fields())
    assert set(d["ctf/type"]) == {"imported"}
    blocks = star.read(star_run / "particles.star")  # cryosparc-tools' STAR parser
    assert len(blocks["particles"]) == len(read_cs(star_run / "particles.cs"))
    refs = star.read(star_run / "class_averages.star")
    assert len(refs["model_classes"]) == len(Dataset.load(star_run / "class_averages.cs"))


# --- CryoSPARC's complete slots (issue 13) ------------------------------------------------


@needs_cstools
def test_cryosparc_tools_loads_every_cs_output_with_the_42_slots(base, star_run, tmp_path):
    """particles.cs, rejected_duplicates.cs, class_averages.cs and the selection's .cs:
    CryoSPARC's field list, order and dtypes, loaded by cryosparc-tools."""
    from cryosparc.dataset import Dataset

    from test_cs_slots import CRYOSPARC_2D_FIELDS, check_slots

    r = cryoclass("select", star_run, "--drop", "2", "--out", tmp_path / "sel", cwd=base)
    assert r.returncode == 0, r.stderr[-3000:]
    for path in (star_run / "particles.cs", star_run / "rejected_duplicates.cs",
                 tmp_path / "sel" / "selected.cs", tmp_path / "sel" / "rejected.cs"):
        raw = np.load(path, allow_pickle=False)
        check_slots(raw, CRYOSPARC_2D_FIELDS, exact_order=True)
        d = Dataset.load(path)
        assert len(d) == len(raw) and set(CRYOSPARC_2D_FIELDS) <= set(d.fields())
        np.testing.assert_array_equal(d["blob/sign"], -1.0)
    blob = {k: v for k, v in CRYOSPARC_2D_FIELDS.items() if k.startswith(("uid", "blob/"))}
    check_slots(np.load(star_run / "class_averages.cs"), blob)
    assert "blob/sign" in Dataset.load(star_run / "class_averages.cs").fields()


def test_blob_sign_plus_one_on_negated_stacks_gives_the_same_classes(base, cs_input, cs_run):
    """The same particles stored with dark protein (negated stacks, blob/sign +1): read
    the way CryoSPARC applies the sign, they classify exactly as the originals (-1)."""
    src, neg = base / "D", base / "DN"
    shutil.copytree(src, neg)
    for stack in (neg / "stacks").glob("*.mrcs"):
        with mrcfile.open(stack, "r+") as m:
            m.data[:] = -m.data
    arr = read_cs(cs_input)
    assert set(arr[F.CS_BLOB_SIGN]) == {-1.0}
    job = base / "J6"
    job.mkdir()
    write_cs(job / "particles.cs", with_fields(arr, {F.CS_BLOB_SIGN: np.ones(len(arr),
                                                                         np.float32)}))
    r = cryoclass("classify", job / "particles.cs", "--project-dir", neg, "--out",
                  base / "RN", *CLASSIFY_ARGS, cwd=base, ranks=2)
    assert r.returncode == 0, r.stderr[-3000:]
    a, _, _ = h5_particles(cs_run)
    b, _, _ = h5_particles(base / "RN")
    np.testing.assert_array_equal(b["class"], a["class"])
    np.testing.assert_allclose(b["psi_deg"], a["psi_deg"], atol=1e-3)
    np.testing.assert_array_equal(read_cs(base / "RN" / "particles.cs")[F.CS_BLOB_SIGN], 1.0)
