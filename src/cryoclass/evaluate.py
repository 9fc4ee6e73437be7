"""Score a 2D classification against the simulator's truth (ours or another program's).

Example::

    cryoclass evaluate data/truth.h5 run/particles.star
    cryoclass evaluate data/truth.h5 relion/run_it025_data.star --json relion.json

Rows are matched through the image name (``index@stack``), so a STAR file with fewer
rows (duplicates removed) or another row order is scored correctly. Metrics:

* ``species_in_own_classes``: fraction of real particles in classes whose majority is
  their own species;
* ``junk_in_junk_classes``: fraction of junk in classes whose majority is junk;
* ``class_species_purity``: particle-weighted mean over species classes of the fraction of
  the class's real particles that are of its species;
* ``psi_median_error_deg`` / ``psi_p90_error_deg``: per class dominated by one
  (species, view) that is not rotationally ambiguous, the error of psi after removing the
  class's constant offset; median over those particles and 90th percentile;
* ``populated_classes``: classes with at least 1% of the particles.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import h5py
import numpy as np


def _norm_name(name: str) -> str:
    idx, path = name.split("@", 1)
    return f"{int(idx)}@{Path(path).name}"


def truth_names(truth_path: Path) -> tuple[np.ndarray, dict]:
    """Image names (``index@stackfile``) of the truth rows, from the STAR beside it."""
    from cryoclass.io.star import read_star

    star = Path(truth_path).with_name("particles.star")
    blocks = read_star(star)
    names = blocks["particles"]["rlnImageName"].astype(str).map(_norm_name).to_numpy()
    with h5py.File(truth_path, "r") as f:
        truth = {k: f[k][()] for k in ("species", "view_index", "psi_deg",
                                       "clean_projections")}
    return names, truth


def rotationally_ambiguous(img: np.ndarray, threshold: float = 0.85) -> bool:
    """Tell whether a rotation by 30-330 degrees maps an image nearly onto itself."""
    from cryoclass.numerics.transforms import rotate_images

    angles = np.deg2rad(np.arange(30, 331, 5))
    rots = rotate_images(np.repeat(img[None], angles.size, 0), angles)
    a = img - img.mean()
    na = np.linalg.norm(a)
    return max(float(((r - r.mean()) * a).sum() / (np.linalg.norm(r - r.mean()) * na))
               for r in rots) > threshold


def score(truth: dict, cls: np.ndarray, psi_rad: np.ndarray) -> dict:
    """Metrics (see the module docstring) for per-truth-row classes and psi (ours)."""
    sp = truth["species"]
    key = sp * 10 + truth["view_index"]
    clean = truth["clean_projections"]
    owner = {}
    for j in np.unique(cls):
        c = collections.Counter(sp[cls == j])
        owner[j] = c.most_common(1)[0][0]
    real = sp >= 0
    own = np.array([owner[c] == s for c, s in zip(cls[real], sp[real], strict=True)])
    junk = ~real
    in_junk = np.array([owner[c] < 0 for c in cls[junk]]) if junk.any() else np.array([1.0])
    purities, weights = [], []
    for j, lab in owner.items():
        sel = (cls == j) & real
        if lab >= 0 and sel.sum():
            purities.append(np.mean(sp[sel] == lab))
            weights.append(sel.sum())
    errs = []
    ambiguous = {}
    for j in np.unique(cls):
        sel = cls == j
        c = collections.Counter(key[sel])
        lab = c.most_common(1)[0][0]
        if lab < 0 or sel.sum() < 20:
            continue
        if lab not in ambiguous:
            ambiguous[lab] = rotationally_ambiguous(clean[lab // 10, lab % 10])
        if ambiguous[lab]:
            continue
        m = sel & (key == lab)
        d = np.angle(np.exp(1j * (psi_rad[m] - np.deg2rad(truth["psi_deg"][m]))))
        centre = np.angle(np.mean(np.exp(1j * d)))
        errs.append(np.degrees(np.abs(np.angle(np.exp(1j * (d - centre))))))
    err = np.concatenate(errs) if errs else np.array([np.nan])
    counts = np.bincount(cls)
    return {
        "n_particles": int(cls.size),
        "species_in_own_classes": float(own.mean()) if own.size else float("nan"),
        "junk_in_junk_classes": float(np.mean(in_junk)),
        "class_species_purity": float(np.average(purities, weights=weights))
        if purities else float("nan"),
        "psi_median_error_deg": float(np.median(err)),
        "psi_p90_error_deg": float(np.percentile(err, 90)),
        "populated_classes": int((counts >= 0.01 * cls.size).sum()),
    }


def evaluate_star(truth_path: Path, star_path: Path) -> dict:
    """Score a classified STAR file (RELION convention psi) against a truth file."""
    from cryoclass.io.star import read_star

    names, truth = truth_names(truth_path)
    blocks = read_star(star_path)
    part = blocks.get("particles")
    if part is None:  # RELION 3.0-style single block
        part = next(iter(blocks.values()))
    row = {n: i for i, n in enumerate(names)}
    idx = np.array([row[_norm_name(n)] for n in part["rlnImageName"].astype(str)])
    sub = {k: (v[idx] if k != "clean_projections" else v) for k, v in truth.items()}
    cls = part["rlnClassNumber"].to_numpy(dtype=np.int64)
    psi = -np.deg2rad(part["rlnAnglePsi"].to_numpy(dtype=np.float64))
    return score(sub, cls, psi)


def main_evaluate(truth: str, star: str, json_path: str | None = None) -> int:
    """Print (and optionally save) the metrics."""
    r = evaluate_star(Path(truth), Path(star))
    print(json.dumps(r, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(r, indent=2))
    return 0
