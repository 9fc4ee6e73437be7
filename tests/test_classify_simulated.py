"""End to end on simulated data with known truth: cryoclass classify under mpiexec -n 2.

3 species x 2 views, 20% junk (noise, ice gradient, off-centre, aggregates), 5% duplicate
picks, SNR 0.1, 64 px, CTF. Thresholds are what the issue asks for; psi is judged by
robust statistics (median and 90th percentile of the per-class error) because a few
percent of 180-degree flips would dominate a circular standard deviation.
"""

import collections
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from cryoclass.evaluate import rotationally_ambiguous
from cryoclass.numerics.fourier import crop_fourier, radius_grid, to_fourier, to_real
from cryoclass.numerics.transforms import rotate_images

from engine_fixtures import classify_easy_set

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    classify_easy_set(base, duplicate_fraction=0.05)
    out = base / "run"
    truth = h5py.File(base / "data" / "truth.h5", "r")
    res = h5py.File(out / "run.h5", "r")
    return truth, res


def dominant(labels, sel):
    c = collections.Counter(labels[sel])
    lab, n = c.most_common(1)[0]
    return lab, n / sel.sum()


def test_species_separate_and_junk_segregates(run):
    truth, res = run
    sp = truth["species"][()]
    cls = res["particles/class"][()]
    owner = {}
    for j in np.unique(cls):
        owner[j] = dominant(sp, cls == j)
    for s in (0, 1, 2):
        mine = sp == s
        in_own = np.isin(cls[mine], [j for j, (lab, f) in owner.items() if lab == s])
        assert in_own.mean() >= 0.95, f"species {s}: {in_own.mean():.1%} in its own classes"
    for j, (lab, frac) in owner.items():  # species purity among the species' particles
        sel = (cls == j) & (sp >= 0)
        if lab >= 0 and sel.sum() >= 20:
            lab2, frac2 = dominant(sp, sel)
            assert frac2 >= 0.95, f"class {j}: dominant species {lab2} only {frac2:.1%}"
    junk = sp < 0
    in_junk = np.isin(cls[junk], [j for j, (lab, f) in owner.items() if lab < 0])
    assert in_junk.mean() >= 0.5, f"only {in_junk.mean():.1%} of junk in junk classes"


def test_psi_offsets_are_constant_within_classes(run):
    truth, res = run
    clean = truth["clean_projections"][()]
    key = truth["species"][()] * 10 + truth["view_index"][()]
    psi_true = np.deg2rad(truth["psi_deg"][()])
    psi = -np.deg2rad(res["particles/psi_deg"][()])  # RELION psi -> ours
    cls = res["particles/class"][()]
    med, p90 = [], []
    for j in np.unique(cls):
        sel = cls == j
        lab, frac = dominant(key, sel)
        if lab < 0 or sel.sum() < 30 or rotationally_ambiguous(clean[lab // 10, lab % 10]):
            continue
        m = sel & (key == lab)
        d = np.angle(np.exp(1j * (psi[m] - psi_true[m])))
        centre = np.angle(np.mean(np.exp(1j * d)))
        err = np.degrees(np.abs(np.angle(np.exp(1j * (d - centre)))))
        med.append(np.median(err))
        p90.append(np.percentile(err, 90))
    assert med and max(med) < 5.0, med
    assert np.mean(np.asarray(p90) < 10.0) >= 0.8, p90


def best_match(img, ref):
    a = img - img.mean()
    angles = np.deg2rad(np.arange(0, 360, 3))
    rots = rotate_images(np.repeat(ref[None], angles.size, 0), angles)
    fa = np.conj(np.fft.fft2(a))
    best = -1.0
    for r in rots:
        r = r - r.mean()
        cc = np.fft.ifft2(np.fft.fft2(r) * fa).real
        best = max(best, cc.max() / (np.linalg.norm(a) * np.linalg.norm(r)))
    return best


def test_class_averages_match_true_projections(run):
    truth, res = run
    key = truth["species"][()] * 10 + truth["view_index"][()]
    cls = res["particles/class"][()]
    images = res["classes/images"][()]
    clean = truth["clean_projections"][()]
    m = images.shape[-1]
    n = clean.shape[-1]
    pix = res.attrs["work_pixel_size_A"]
    lowpass = radius_grid(m) <= m * pix / 9.0
    scores = []
    for j in np.unique(cls):
        sel = cls == j
        lab, frac = dominant(key, sel)
        if lab < 0 or sel.sum() < 30:
            continue
        ref = clean[lab // 10, lab % 10]
        ref_w = to_real(crop_fourier(to_fourier(ref), n, m) * lowpass, m)
        scores.append(best_match(images[j - 1], ref_w))
    assert scores and min(scores) > 0.8, scores


def test_duplicates_found(run):
    truth, res = run
    dup_of = truth["duplicate_of"][()]
    flagged = res["particles/duplicate"][()].astype(bool)
    pairs = np.flatnonzero(dup_of >= 0)
    involved = np.zeros(dup_of.size, bool)
    involved[pairs] = True
    involved[dup_of[pairs]] = True
    assert flagged.sum() > 0
    assert (flagged & involved).sum() / flagged.sum() >= 0.9  # precision
    one_of_pair = flagged[pairs] ^ flagged[dup_of[pairs]]  # exactly one of each pair removed
    assert one_of_pair.mean() >= 0.5, f"{one_of_pair.mean():.0%} of duplicate pairs resolved"


def _aligned_class_correlations(images, cls, classes, n_classes=4):
    out = []
    for j in range(1, n_classes + 1):
        sel = cls == j
        if sel.sum() < 20:
            continue
        avg = images[sel].mean(0)
        a, b = avg - avg.mean(), classes[j - 1] - classes[j - 1].mean()
        out.append(float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))))
    return np.array(out)


def test_star_psi_and_origin_follow_relion_conventions(run, tmp_path):
    """Applying the written psi/origin the RELION way aligns particles to their class."""
    import mrcfile

    from cryoclass.io.particles import load_particles
    from cryoclass.io.star import read_star
    from cryoclass.numerics.transforms import shift_images

    truth, res = run
    run_dir = Path(res.filename).parent
    star = run_dir / "particles.star"
    part = read_star(star)["particles"]
    # image names keep the input's relative paths (RELION: relative to the project dir)
    table = load_particles(star, project_dir=str(Path(truth.filename).parent))
    images = table.image_source().read(np.arange(len(table)))
    ps = float(table.meta["pixel_size_A"].iloc[0])
    origin = np.stack([part["rlnOriginXAngst"], part["rlnOriginYAngst"]], 1) / ps
    psi = np.deg2rad(part["rlnAnglePsi"].to_numpy())
    cls = part["rlnClassNumber"].to_numpy()
    with mrcfile.open(run_dir / "class_averages.mrcs") as m:
        classes = m.data.copy()
    # RELION: particle centre = box centre - origin -> shift by +origin; then undo the
    # projection's in-plane rotation (a rotation by -psi in our convention) with +psi
    centred = shift_images(images, origin)
    good = _aligned_class_correlations(rotate_images(centred, psi), cls, classes)
    flipped = _aligned_class_correlations(rotate_images(centred, -psi), cls, classes)
    assert good.mean() > 0.7 and (good - flipped).mean() > 0.1, (good, flipped)


@pytest.mark.skipif(not __import__("shutil").which("relion_stack_create"),
                    reason="RELION not installed (make relion-compare installs it)")
def test_relion_applies_our_transformations(run, tmp_path):
    """relion_stack_create --apply_transformation with our STAR aligns our particles."""
    import mrcfile

    from cryoclass.io.star import read_star

    truth, res = run
    run_dir = Path(res.filename).parent
    star = run_dir / "particles.star"
    data_dir = Path(truth.filename).parent
    r = subprocess.run(["relion_stack_create", "--i", str(star), "--o", str(tmp_path / "al"),
                        "--apply_transformation"], cwd=data_dir, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cls = read_star(star)["particles"]["rlnClassNumber"].to_numpy()
    with mrcfile.open(tmp_path / "al.mrcs") as m:
        aligned = m.data.copy()
    with mrcfile.open(run_dir / "class_averages.mrcs") as m:
        classes = m.data.copy()
    assert _aligned_class_correlations(aligned, cls, classes).mean() > 0.7
