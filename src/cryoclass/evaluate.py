"""Score a 2D classification against the simulator's truth (ours or another program's).

Example::

    cryoclass evaluate data/truth.h5 run/particles.star
    cryoclass evaluate data/truth.h5 relion/run_it015_data.star --json relion.json

Rows are matched through the image name (``index@stack``), so a STAR file with fewer
rows (duplicates removed) or another row order is scored correctly. The class averages
are read from ``class_averages.mrcs`` beside the STAR (cryoclass) or
``run_itNNN_classes.mrcs`` (RELION's ``run_itNNN_data.star``), or ``--classes FILE``.
psi is read in RELION's convention (``_rlnAnglePsi``, which cryoclass writes too).

Metrics of the easy (discrete-view) benchmark:

* ``species_in_own_classes``: fraction of real particles in classes whose majority is
  their own species;
* ``junk_in_junk_classes``: fraction of junk in classes whose majority is junk;
* ``class_species_purity``: particle-weighted mean over species classes of the fraction of
  the class's real particles that are of its species;
* ``psi_median_error_deg`` / ``psi_p90_error_deg``: per class dominated by one
  (species, discrete view) that is not rotationally ambiguous, the error of psi after
  removing the class's constant offset; median over those particles and 90th percentile
  (NaN with continuous views);
* ``populated_classes``: classes with at least 1% of the particles.

Metrics of the hard benchmark (continuous views; definitions and equations in
``docs/accuracy.md``):

* ``junk_in_good_classes`` (and ``junk_in_good_classes_<kind>`` per junk kind):
  fraction of junk rows in classes whose majority is real particles;
  ``good_in_junk_classes``: fraction of real particles in junk-majority classes;
* ``view_spread_deg``: mean angle between each good member's true viewing direction and
  its class's mean direction, over good-majority classes (size-weighted);
  ``view_spread_random_deg``: the same with randomly permuted labels;
  ``view_spread_ratio``: their ratio (1 = no better than random);
  ``view_spread_p_value`` / ``view_spread_z``: a one-sided permutation test of "better
  than random" (the share of label permutations whose spread is at most the observed
  one, and the observed spread's distance below their mean in units of their std);
* ``view_axial_spread_deg`` (and ``_random_deg``), ``opposite_view_fraction``: the view
  spread blind to a view's sign, and the share of a class's members seen from the side
  opposite to most of them (their images are mirrored: see :func:`opposite_views`);
* ``inplane_circular_std_deg``: size-weighted circular std within a class of
  (estimated psi - true in-plane angle relative to the class's mean view);
* ``class_projection_ncc``: size-weighted NCC of each good class's average with the clean
  projection at its members' mean view, after in-plane rotation and shift alignment;
* ``streak_index_mean`` / ``_max``, ``streaky_classes``: anisotropy of the high-frequency
  power of the class averages (parallel noise streaks), 1 = isotropic;
* ``duplicate_pairs_resolved``: fraction of duplicate pairs of which exactly one pick is
  left in the STAR file.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import re
from pathlib import Path

import h5py
import numpy as np

logger = logging.getLogger(__name__)

#: Good members a class needs for the view-spread and in-plane metrics.
MIN_VIEW_MEMBERS = 5
#: Good members a class needs for its average to be compared with the true projection.
MIN_NCC_MEMBERS = 10
#: Members a class needs for its average to get a streak index.
MIN_STREAK_MEMBERS = 10
#: Low-pass (Å) applied to the class average and to the true projection before the NCC.
NCC_LOWPASS_A = 15.0
#: In-plane rotation step (deg) of the NCC alignment; shifts are searched exhaustively.
NCC_PSI_STEP_DEG = 2.0
#: Outer band of the streak index, as fractions of the image's band limit.
STREAK_BAND = (0.6, 0.95)
#: Shell power (relative to the strongest shell) that still counts as content.
STREAK_POWER_FLOOR = 1e-6
#: Angular bins of the streak index over 180 deg.
STREAK_BINS = 18
#: Streak index (relative to white noise) from which a class counts as streaky.
STREAK_THRESHOLD = 2.0
#: Random permutations averaged for the view-spread baseline.
N_PERMUTATIONS = 5
#: Random permutations (the first :data:`N_PERMUTATIONS` included) of the view spread's
#: permutation test; its smallest p-value is ``1 / (N_NULL_PERMUTATIONS + 1)``.
N_NULL_PERMUTATIONS = 199

_TRUTH_KEYS = ("species", "view_index", "psi_deg", "clean_projections", "junk_type",
               "rotation", "duplicate_of")


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
        truth = {k: f[k][()] for k in _TRUTH_KEYS if k in f}
        params = json.loads(f.attrs["params_json"]) if "params_json" in f.attrs else {}
    if "junk_type" in truth:
        truth["junk_type"] = np.array([v.decode() if isinstance(v, bytes) else str(v)
                                       for v in truth["junk_type"]], dtype=object)
    truth["diameter_A"] = float(params.get("diameter_A_resolved", np.nan))
    truth["pixel_size_A"] = float(params.get("pixel_size_A", np.nan))
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
    view = truth["view_index"]
    # (species, discrete view) label; -1 for junk and continuous views (no view to match)
    key = np.where((sp >= 0) & (view >= 0), sp * 10 + view, -1)
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


# --- hard-benchmark metrics: pure functions of per-row arrays -----------------------------

def class_is_good(cls: np.ndarray, is_good: np.ndarray) -> dict[int, bool]:
    """Per class: True when strictly more of its rows are real particles than junk."""
    out = {}
    for j in np.unique(cls):
        sel = cls == j
        n_good = int(np.count_nonzero(is_good[sel]))
        out[int(j)] = n_good > int(sel.sum()) - n_good
    return out


def junk_segregation(cls: np.ndarray, junk_type: np.ndarray) -> dict:
    """Junk in good-majority classes and good particles in junk-majority classes.

    Parameters
    ----------
    cls : ndarray (N,) int
        Class of each row.
    junk_type : ndarray (N,) str
        ``""`` for real particles, else the junk kind.

    Returns
    -------
    dict
        ``junk_in_good_classes``, ``good_in_junk_classes``, ``junk_in_good_classes_<kind>``
        per kind present, ``good_classes`` and ``junk_classes`` (counts).
    """
    junk_type = np.asarray(junk_type).astype(str)
    is_good = junk_type == ""
    good = class_is_good(cls, is_good)
    in_good = np.array([good[int(c)] for c in cls], dtype=bool)
    out = {
        "junk_in_good_classes": float(in_good[~is_good].mean()) if (~is_good).any()
        else float("nan"),
        "good_in_junk_classes": float((~in_good[is_good]).mean()) if is_good.any()
        else float("nan"),
        "good_classes": int(sum(good.values())),
        "junk_classes": int(len(good) - sum(good.values())),
    }
    for kind in sorted(set(junk_type[~is_good])):
        sel = junk_type == kind
        out[f"junk_in_good_classes_{kind}"] = float(in_good[sel].mean())
    return out


def viewing_directions(rotation: np.ndarray) -> np.ndarray:
    """Return viewing directions (N, 3) in the object frame: ``d = R_v^T e_z`` (third row)."""
    return np.asarray(rotation, dtype=np.float64)[..., 2, :]


def mean_direction(d: np.ndarray) -> np.ndarray:
    """Normalised mean of unit vectors (m, 3) -> (3,) (e_z when they cancel exactly)."""
    s = d.sum(axis=0)
    norm = np.linalg.norm(s)
    return s / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def _angles_to_mean_deg(d: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Angle (deg) of each direction to the mean direction of its label group."""
    out = np.empty(labels.size)
    for j in np.unique(labels):
        sel = labels == j
        m = mean_direction(d[sel])
        out[sel] = np.degrees(np.arccos(np.clip(d[sel] @ m, -1.0, 1.0)))
    return out


def _member_directions(rotation: np.ndarray, members: dict[int, np.ndarray]):
    """Return the viewing directions (n, 3) of all members and their class labels (n,)."""
    rows = np.concatenate(list(members.values()))
    labels = np.concatenate([np.full(r.size, j) for j, r in members.items()])
    return viewing_directions(rotation[rows]), labels


def opposite_views(rotation: np.ndarray, members: dict[int, np.ndarray],
                   n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> dict:
    r"""How far classes mix a view with its opposite (mirror-image) view.

    The projections along :math:`d` and :math:`-d` are mirror images of each other, so a
    2D class cannot hold both unless the particle looks mirror-symmetric. For class k,
    :math:`a_k` is the principal axis of its members' directions (top eigenvector of
    :math:`\sum_i d_i d_i^T`); the axial spread is the mean of
    :math:`\arccos|d_i \cdot a_k|` (blind to the sign of d: a class of one view and its
    mirror scores as well as a pure one), and the opposite-view fraction is the share of
    members on the minority side of :math:`a_k` (0: one side only; 0.5: a view and its
    mirror in equal parts). Size-weighted over classes; the axial spread also with
    randomly permuted labels.

    Returns
    -------
    dict
        ``view_axial_spread_deg``, ``view_axial_spread_random_deg``,
        ``opposite_view_fraction``.
    """
    if not members:
        nan = float("nan")
        return {"view_axial_spread_deg": nan, "view_axial_spread_random_deg": nan,
                "opposite_view_fraction": nan}
    d, labels = _member_directions(rotation, members)

    def per_member(lab):
        ang, minority = np.empty(lab.size), np.empty(lab.size)
        for j in np.unique(lab):
            sel = lab == j
            axis = np.linalg.eigh(d[sel].T @ d[sel])[1][:, -1]
            c = d[sel] @ axis
            ang[sel] = np.degrees(np.arccos(np.clip(np.abs(c), 0.0, 1.0)))
            minority[sel] = min(np.mean(c > 0), np.mean(c < 0))
        return ang, minority

    ang, minority = per_member(labels)
    rng = np.random.default_rng(seed)
    base = float(np.mean([per_member(rng.permutation(labels))[0].mean()
                          for _ in range(n_permutations)]))
    return {"view_axial_spread_deg": float(ang.mean()), "view_axial_spread_random_deg": base,
            "opposite_view_fraction": float(minority.mean())}


def view_classes(cls: np.ndarray, species: np.ndarray, min_members: int) -> dict[int, np.ndarray]:
    """Good-majority classes and their members used for the view metrics.

    A class counts when real particles are its majority; its members are its real
    particles of the class's most common species (directions of different species are
    not comparable), and it needs at least ``min_members`` of them.

    Returns
    -------
    dict
        Class -> row indices (into the per-row arrays) of its view members.
    """
    good = class_is_good(cls, species >= 0)
    out = {}
    for j, is_good in good.items():
        if not is_good:
            continue
        rows = np.flatnonzero((cls == j) & (species >= 0))
        top = collections.Counter(species[rows].tolist()).most_common(1)[0][0]
        rows = rows[species[rows] == top]
        if rows.size >= min_members:
            out[j] = rows
    return out


def view_spread(rotation: np.ndarray, members: dict[int, np.ndarray],
                n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                n_null: int = N_NULL_PERMUTATIONS) -> dict:
    r"""Mean angle between true viewing directions and their class's mean direction.

    For class k with members i (unit viewing directions :math:`d_i`),
    :math:`m_k = \sum_i d_i / \|\sum_i d_i\|` and the spread is the mean over all members
    of all classes of :math:`\arccos(d_i \cdot m_k)` (so classes weigh by size). The
    baseline is the same after a random permutation of the class labels among those
    members (class sizes kept), averaged over ``n_permutations``. The same stream of
    permutations, continued to ``n_null`` of them, is the null distribution of a
    one-sided permutation test: ``p = (1 + #{null spread <= spread}) / (1 + n_null)``
    and ``z = (mean(null) - spread) / std(null)`` (classes group views better than
    random at level p when the spread lies below the permuted ones).

    Returns
    -------
    dict
        ``view_spread_deg``, ``view_spread_random_deg``, ``view_spread_ratio``,
        ``view_spread_p_value``, ``view_spread_z``, ``view_classes`` (classes scored).
    """
    if not members:
        nan = float("nan")
        return {"view_spread_deg": nan, "view_spread_random_deg": nan,
                "view_spread_ratio": nan, "view_spread_p_value": nan, "view_spread_z": nan,
                "view_classes": 0}
    d, labels = _member_directions(rotation, members)
    spread = float(_angles_to_mean_deg(d, labels).mean())
    rng = np.random.default_rng(seed)
    null = np.array([_angles_to_mean_deg(d, rng.permutation(labels)).mean()
                     for _ in range(max(n_null, n_permutations))])
    base = float(null[:n_permutations].mean())
    sd = float(null.std(ddof=1)) if null.size > 1 else float("nan")
    return {"view_spread_deg": spread, "view_spread_random_deg": base,
            "view_spread_ratio": spread / base if base > 0 else float("nan"),
            "view_spread_p_value": float((1 + np.sum(null <= spread)) / (1 + null.size)),
            "view_spread_z": float((null.mean() - spread) / sd) if sd > 0 else float("nan"),
            "view_classes": len(members)}


def minimal_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotations (m, 3, 3) taking unit vector ``a`` (3,) to each of ``b`` (m, 3) about ``a x b``.

    Rodrigues' formula; for ``b = -a`` (no unique axis) a half turn about an axis
    orthogonal to ``a``.
    """
    b = np.atleast_2d(b)
    v = np.cross(a, b)  # (m, 3)
    c = b @ a  # (m,)
    vx = np.zeros((b.shape[0], 3, 3))
    vx[:, 0, 1], vx[:, 0, 2] = -v[:, 2], v[:, 1]
    vx[:, 1, 0], vx[:, 1, 2] = v[:, 2], -v[:, 0]
    vx[:, 2, 0], vx[:, 2, 1] = -v[:, 1], v[:, 0]
    out = np.eye(3) + vx
    near = c > -1.0 + 1e-9
    out[near] += (vx[near] @ vx[near]) / (1.0 + c[near])[:, None, None]
    if (~near).any():
        from cryoclass.simulation.views import rotation_to_z

        u = rotation_to_z(a)[0]  # a unit vector orthogonal to a
        out[~near] = 2.0 * np.outer(u, u) - np.eye(3)
    return out


def inplane_angles_rad(rotation: np.ndarray, psi_deg: np.ndarray, m: np.ndarray) -> np.ndarray:
    r"""Return each member's true in-plane angle relative to a reference frame at ``m``.

    Member i has the full rotation :math:`R_i = R_z(\psi_i) R_{v,i}` (object -> image)
    and viewing direction :math:`d_i = R_i^T e_z`. With :math:`A_i` the minimal rotation
    taking ``m`` to :math:`d_i` and :math:`R_m` a fixed rotation with :math:`R_m m = e_z`,
    :math:`R_i A_i R_m^T` fixes :math:`e_z`, so it is :math:`R_z(\gamma_i)`: member i's
    image is about ``rotate_gamma_i`` of the projection at ``m``. Unlike a ZYZ psi this
    has no singularity at the poles.

    Parameters
    ----------
    rotation : ndarray (n, 3, 3)
        View rotations ``R_v`` (without psi).
    psi_deg : ndarray (n,)
        True in-plane angles (deg).
    m : ndarray (3,)
        Unit reference direction (the class mean).

    Returns
    -------
    ndarray (n,)
        :math:`\gamma_i` in radians.
    """
    from cryoclass.simulation.views import rot_z, rotation_to_z

    full = rot_z(np.deg2rad(psi_deg)) @ rotation
    a = minimal_rotation(m, viewing_directions(full))
    g = full @ a @ rotation_to_z(m).T
    return np.arctan2(g[:, 1, 0], g[:, 0, 0])


def circular_std_rad(angles_rad: np.ndarray) -> float:
    r"""Circular standard deviation :math:`\sqrt{-2 \ln R}`, R the mean resultant length."""
    r = float(np.abs(np.mean(np.exp(1j * np.asarray(angles_rad)))))
    return float(np.sqrt(-2.0 * np.log(max(r, 1e-300))))


def inplane_consistency(rotation: np.ndarray, psi_true_deg: np.ndarray,
                        psi_est_rad: np.ndarray, members: dict[int, np.ndarray]) -> dict:
    r"""Size-weighted circular std within classes of (estimated psi - true in-plane angle).

    ``psi_est_rad`` is the in-plane angle in cryoclass's internal sense (image =
    ``rotate_psi(class average)``, i.e. ``-_rlnAnglePsi``); a perfect classification has
    :math:`\psi^{est}_i - \gamma_i` constant within each class.

    Returns
    -------
    dict
        ``inplane_circular_std_deg`` (weights = members per class) and
        ``inplane_median_abs_error_deg`` (median |error| after removing each class's
        circular mean).
    """
    if not members:
        return {"inplane_circular_std_deg": float("nan"),
                "inplane_median_abs_error_deg": float("nan")}
    stds, weights, errs = [], [], []
    for rows in members.values():
        m = mean_direction(viewing_directions(rotation[rows]))
        e = psi_est_rad[rows] - inplane_angles_rad(rotation[rows], psi_true_deg[rows], m)
        stds.append(circular_std_rad(e))
        weights.append(rows.size)
        centre = np.angle(np.mean(np.exp(1j * e)))
        errs.append(np.abs(np.angle(np.exp(1j * (e - centre)))))
    return {"inplane_circular_std_deg": float(np.degrees(np.average(stds, weights=weights))),
            "inplane_median_abs_error_deg": float(np.degrees(np.median(np.concatenate(errs))))}


def _lowpass(images: np.ndarray, pixel_size_A: float, res_A: float) -> np.ndarray:
    """Raised-cosine low-pass (width 0.1 Nyquist) at ``res_A`` of (m, n, n) images."""
    n = images.shape[-1]
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.rfftfreq(n), indexing="ij"))
    fc = pixel_size_A / res_A  # cycles per pixel
    w = 0.05
    filt = np.clip(0.5 * (1 + np.cos(np.pi * (f - fc + w) / (2 * w))), 0, 1)
    filt[f <= fc - w] = 1.0
    filt[f >= fc + w] = 0.0
    return np.fft.irfft2(np.fft.rfft2(images) * filt, s=(n, n))


def aligned_ncc(images: np.ndarray, references: np.ndarray,
                psi_step_deg: float = NCC_PSI_STEP_DEG, max_shift_px: float | None = None,
                batch: int = 8) -> np.ndarray:
    """Best normalised cross-correlation of each image with its rotated, shifted reference.

    Each reference is rotated by every multiple of ``psi_step_deg`` (Fourier
    interpolation); for each rotation all cyclic shifts up to ``max_shift_px`` (default
    n/4) are tried by FFT. Means are removed first; the NCC is ``<a, T r> / (|a| |r|)``.

    Parameters
    ----------
    images, references : ndarray (c, n, n) or (n, n)
        Pairs to compare.

    Returns
    -------
    ndarray (c,) (a float for single images)
    """
    from cryoclass.numerics.fourier import freq_indices, to_real
    from cryoclass.numerics.transforms import rotate_coefficients

    single = np.ndim(images) == 2
    images = np.atleast_3d(np.asarray(images, dtype=np.float64).T).T
    references = np.atleast_3d(np.asarray(references, dtype=np.float64).T).T
    n = images.shape[-1]
    angles = np.deg2rad(np.arange(0.0, 360.0, psi_step_deg))
    ky, kx = freq_indices(n, np)
    c = np.fft.fftfreq(n) * n
    outside = np.hypot(c[:, None], c[None, :]) > (n / 4 if max_shift_px is None
                                                  else max_shift_px)
    out = np.empty(images.shape[0])
    for b0 in range(0, images.shape[0], batch):
        refs = references[b0:b0 + batch]
        coeffs = rotate_coefficients(refs, ky.ravel(), kx.ravel(), angles)  # (b, A, M)
        for i, co in enumerate(coeffs):
            a = images[b0 + i] - images[b0 + i].mean()
            rots = to_real(co.reshape(angles.size, n, n // 2 + 1), n)
            rots -= rots.mean(axis=(1, 2), keepdims=True)
            cc = np.fft.irfft2(np.fft.rfft2(rots) * np.conj(np.fft.rfft2(a))[None], s=(n, n))
            cc[:, outside] = -np.inf
            norms = np.linalg.norm(rots.reshape(angles.size, -1), axis=1) * np.linalg.norm(a)
            out[b0 + i] = float(np.max(cc.reshape(angles.size, -1).max(axis=1)
                                       / np.maximum(norms, 1e-300)))
    return float(out[0]) if single else out


def class_projection_ncc(averages: np.ndarray, rotation: np.ndarray, species: np.ndarray,
                         members: dict[int, np.ndarray], render, pixel_size_A: float,
                         diameter_A: float, lowpass_A: float = NCC_LOWPASS_A) -> dict:
    """Size-weighted NCC of good class averages with the true projection of their mean view.

    Parameters
    ----------
    averages : ndarray (K, m, m)
        Class averages; class j (1-based) is ``averages[j - 1]``.
    rotation, species : ndarray
        Truth per row.
    members : dict
        Class -> member rows (:func:`view_classes` with :data:`MIN_NCC_MEMBERS`).
    render : callable
        ``render(species, rotations (c, 3, 3)) -> (c, n, n)`` clean projections.
    pixel_size_A : float
        Pixel size of the truth images; the averages' pixel size is ``pixel_size_A n / m``.
    diameter_A : float
        Particle diameter: both images get a soft circular mask of 1.1 diameters.
    lowpass_A : float
        Both images are low-passed at this resolution.

    Returns
    -------
    dict
        ``class_projection_ncc`` (weights = members), ``class_projection_ncc_min``,
        ``ncc_classes``.
    """
    from cryoclass.numerics.fourier import crop_fourier, pad_fourier, to_fourier, to_real
    from cryoclass.numerics.masks import soft_circular_mask
    from cryoclass.simulation.views import rotation_to_z

    members = {j: r for j, r in members.items() if j - 1 < averages.shape[0]}
    if not members:
        return {"class_projection_ncc": float("nan"), "class_projection_ncc_min": float("nan"),
                "ncc_classes": 0}
    keys = list(members)
    rots = np.stack([rotation_to_z(mean_direction(viewing_directions(rotation[members[j]])))
                     for j in keys])
    sp = np.array([collections.Counter(species[members[j]].tolist()).most_common(1)[0][0]
                   for j in keys])
    refs = np.asarray(render(sp, rots), dtype=np.float64)
    n, m = refs.shape[-1], averages.shape[-1]
    if m != n:
        f = to_fourier(refs)
        refs = to_real(crop_fourier(f, n, m) if m < n else pad_fourier(f, n, m), m)
    pix = pixel_size_A * n / m
    radius = 0.55 * diameter_A / pix if np.isfinite(diameter_A) else 0.45 * m
    mask = soft_circular_mask(m, radius, radius + 0.05 * m, dtype=np.float64)
    avg = _lowpass(np.asarray(averages, dtype=np.float64)[[j - 1 for j in keys]], pix,
                   lowpass_A) * mask
    refs = _lowpass(refs, pix, lowpass_A) * mask
    scores = aligned_ncc(avg, refs)
    w = np.array([members[j].size for j in keys], dtype=float)
    return {"class_projection_ncc": float(np.average(scores, weights=w)),
            "class_projection_ncc_min": float(scores.min()), "ncc_classes": len(keys)}


def _band_limit(power: np.ndarray, r: np.ndarray, floor: float = STREAK_POWER_FLOOR) -> float:
    """Largest radius (fraction of Nyquist) whose shell holds >= ``floor`` x the peak shell."""
    shell = np.minimum((r * 32).astype(int), 32)  # 1/32 Nyquist shells
    per = np.bincount(shell.ravel(), weights=power.ravel(), minlength=33)
    per /= np.maximum(np.bincount(shell.ravel(), minlength=33), 1)
    per = per[1:32]  # no DC shell, no corners
    if per.max() <= 0:
        return 0.0
    live = np.flatnonzero(per >= floor * per.max())
    return float(min(1.0, (live[-1] + 2) / 32.0))


def _max_over_mean(power: np.ndarray, bins: np.ndarray, n_bins: int) -> float:
    """Largest angular-bin mean of ``power`` over the mean of the bin means."""
    count = np.bincount(bins, minlength=n_bins)
    per_bin = np.bincount(bins, weights=power, minlength=n_bins)[count > 0] / count[count > 0]
    mean = per_bin.mean()
    return float(per_bin.max() / mean) if mean > 0 else float("nan")


@functools.lru_cache(maxsize=64)
def _noise_max_over_mean(n: int, lo: float, hi: float, n_bins: int,
                         n_images: int = 32) -> float:
    """Return the mean :func:`_max_over_mean` of white noise on the same band (seeded)."""
    r, bins_all = _polar_grid(n, n_bins)
    sel = (r >= lo) & (r <= hi)
    rng = np.random.default_rng(0)
    power = rng.exponential(size=(n_images, int(sel.sum())))  # |white noise F|^2
    return float(np.mean([_max_over_mean(p, bins_all[sel], n_bins) for p in power]))


def _polar_grid(n: int, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius (fraction of Nyquist) and angular bin (over 180 deg) of each rfft2 coefficient."""
    ky = np.fft.fftfreq(n)[:, None] * 2.0
    kx = np.fft.rfftfreq(n)[None, :] * 2.0
    theta = np.mod(np.arctan2(ky, kx), np.pi)
    return np.hypot(ky, kx), np.minimum((theta / np.pi * n_bins).astype(int), n_bins - 1)


def streak_index(images: np.ndarray, band: tuple[float, float] = STREAK_BAND,
                 n_bins: int = STREAK_BINS) -> np.ndarray:
    """Anisotropy of the high-frequency power of each image, (m, n, n) -> (m,).

    Parallel streaks in an image put their power along one direction of the Fourier
    plane. Per image, the frequencies whose radius is within ``band`` times the image's
    band limit are used (the limit is the outermost shell that still holds
    :data:`STREAK_POWER_FLOOR` of the strongest shell's power, at most Nyquist, so an
    average low-passed by the classifier is judged in its own outer shells). Their power
    :math:`|F(q)|^2` is averaged in ``n_bins`` angular bins over 180 deg (the spectrum of
    a real image is point-symmetric) and the largest bin is divided by the mean of the
    bins; that ratio is divided by its expectation for white noise on the same band
    (which is above 1 from the spread of the bin means alone). So isotropic noise scores
    about 1 whatever the band, and parallel streaks several. NaN for an empty image.
    """
    images = np.asarray(images, dtype=np.float64)
    n = images.shape[-1]
    r, bins_all = _polar_grid(n, n_bins)
    power = np.abs(np.fft.rfft2(images - images.mean(axis=(1, 2), keepdims=True))) ** 2
    out = np.full(images.shape[0], np.nan)
    for i, p in enumerate(power):
        limit = _band_limit(p, r)
        lo, hi = round(band[0] * limit, 6), round(band[1] * limit, 6)
        sel = (r >= lo) & (r <= hi)
        if sel.sum() < 2 * n_bins:
            continue
        out[i] = _max_over_mean(p[sel], bins_all[sel], n_bins) / _noise_max_over_mean(
            n, lo, hi, n_bins)
    return out


def streak_index_baseline(n: int, n_images: int = 64, seed: int = 0) -> float:
    """Mean :func:`streak_index` of white Gaussian noise images of size ``n`` (about 1)."""
    rng = np.random.default_rng(seed)
    return float(np.nanmean(streak_index(rng.standard_normal((n_images, n, n)))))


def class_streaks(averages: np.ndarray, cls: np.ndarray, min_members: int = MIN_STREAK_MEMBERS,
                  threshold: float = STREAK_THRESHOLD) -> dict:
    """Streak index of every class average with at least ``min_members`` particles.

    Returns
    -------
    dict
        ``streak_index_mean``, ``streak_index_max``, ``streaky_classes`` (index >=
        ``threshold``), ``streak_classes`` (classes scored), ``streak_index_noise``
        (white-noise reference of the same box).
    """
    counts = np.bincount(cls, minlength=averages.shape[0] + 1)
    keys = [j for j in range(1, averages.shape[0] + 1) if counts[j] >= min_members]
    if not keys:
        nan = float("nan")
        return {"streak_index_mean": nan, "streak_index_max": nan, "streaky_classes": 0,
                "streak_classes": 0, "streak_index_noise": nan}
    idx = streak_index(averages[[j - 1 for j in keys]])
    return {"streak_index_mean": float(np.nanmean(idx)), "streak_index_max": float(np.nanmax(idx)),
            "streaky_classes": int(np.count_nonzero(idx >= threshold)),
            "streak_classes": len(keys),
            "streak_index_noise": streak_index_baseline(averages.shape[-1])}


def duplicate_pairs_resolved(duplicate_of: np.ndarray, present: np.ndarray) -> dict:
    """Fraction of duplicate pairs (truth) of which exactly one pick is in the output.

    Parameters
    ----------
    duplicate_of : ndarray (N,) int
        Truth: row of the original pick, -1 otherwise (all truth rows).
    present : ndarray (N,) bool
        Whether each truth row is in the classified STAR file.
    """
    pairs = np.flatnonzero(duplicate_of >= 0)
    removed = ~present
    involved = np.zeros(present.size, dtype=bool)
    involved[pairs] = True
    involved[duplicate_of[pairs]] = True
    return {
        "duplicate_pairs": int(pairs.size),
        "duplicate_pairs_resolved": float(np.mean(present[pairs] ^ present[duplicate_of[pairs]]))
        if pairs.size else float("nan"),
        "removed_rows": int(removed.sum()),
        "removed_rows_in_pairs": float(np.mean(involved[removed])) if removed.any()
        else float("nan"),
    }


def hard_metrics(truth: dict, rows: np.ndarray, cls: np.ndarray, psi_rad: np.ndarray,
                 averages: np.ndarray | None = None, render=None,
                 lowpass_A: float = NCC_LOWPASS_A) -> dict:
    """Every hard-benchmark metric for classified rows of a truth (see the module docstring).

    Parameters
    ----------
    truth : dict
        Per-truth-row arrays (:func:`truth_names`); ``pixel_size_A`` and ``diameter_A``.
    rows : ndarray (P,) int
        Truth row of each classified particle.
    cls : ndarray (P,) int
        Class (1-based) of each classified particle.
    psi_rad : ndarray (P,)
        Estimated in-plane angle, cryoclass's internal sense (``-_rlnAnglePsi``).
    averages : ndarray (K, m, m), optional
        Class averages (class j is row j - 1); without them the NCC and streak metrics
        are left out.
    render : callable, optional
        ``render(species, rotations) -> projections`` for the NCC.
    """
    sub = {k: truth[k][rows] for k in ("species", "junk_type", "rotation", "psi_deg")}
    out = junk_segregation(cls, sub["junk_type"])
    members = view_classes(cls, sub["species"], MIN_VIEW_MEMBERS)
    out.update(view_spread(sub["rotation"], members))
    out.update(opposite_views(sub["rotation"], members))
    out.update(inplane_consistency(sub["rotation"], sub["psi_deg"], psi_rad, members))
    if averages is not None:
        if render is not None:
            ncc_members = {j: r for j, r in members.items() if r.size >= MIN_NCC_MEMBERS}
            out.update(class_projection_ncc(averages, sub["rotation"], sub["species"],
                                            ncc_members, render, truth["pixel_size_A"],
                                            truth["diameter_A"], lowpass_A))
        out.update(class_streaks(averages, cls))
    present = np.zeros(truth["duplicate_of"].size, dtype=bool)
    present[rows] = True
    out.update(duplicate_pairs_resolved(truth["duplicate_of"], present))
    return out


def class_averages_path(star_path: Path) -> Path | None:
    """Find the class averages beside a classified STAR (RELION ``_data`` -> ``_classes``)."""
    star_path = Path(star_path)
    m = re.match(r"(.*_it\d+)_data\.star$", star_path.name)
    cands = [star_path.with_name(m.group(1) + "_classes.mrcs")] if m else []
    cands.append(star_path.with_name("class_averages.mrcs"))
    return next((c for c in cands if c.exists()), None)


def evaluate_star(truth_path: Path, star_path: Path, classes_path: Path | None = None,
                  lowpass_A: float = NCC_LOWPASS_A) -> dict:
    """Score a classified STAR file (RELION convention psi) against a truth file.

    Parameters
    ----------
    truth_path : Path
        ``truth.h5`` of ``cryoclass simulate`` (``particles.star`` beside it).
    star_path : Path
        Classified particles (cryoclass ``particles.star``, RELION ``run_itNNN_data.star``).
    classes_path : Path, optional
        Class averages (MRC stack, class j = image j); default
        :func:`class_averages_path`. Without averages the NCC and streak metrics are
        left out.
    lowpass_A : float
        Low-pass of the class-average NCC.
    """
    from cryoclass.io.mrc import read_stack
    from cryoclass.io.star import read_star

    names, truth = truth_names(truth_path)
    blocks = read_star(star_path)
    part = blocks.get("particles")
    if part is None:  # RELION 3.0-style single block
        part = next(iter(blocks.values()))
    row = {n: i for i, n in enumerate(names)}
    idx = np.array([row[_norm_name(n)] for n in part["rlnImageName"].astype(str)])
    sub = {k: (truth[k][idx] if k != "clean_projections" else truth[k])
           for k in ("species", "view_index", "psi_deg", "clean_projections")}
    cls = part["rlnClassNumber"].to_numpy(dtype=np.int64)
    psi = -np.deg2rad(part["rlnAnglePsi"].to_numpy(dtype=np.float64))
    out = score(sub, cls, psi)
    if "rotation" not in truth or "junk_type" not in truth:
        return out
    classes_path = Path(classes_path) if classes_path else class_averages_path(star_path)
    averages = None
    if classes_path is not None:
        averages = read_stack(classes_path)[0]
        out["class_averages"] = str(classes_path)
    else:
        logger.warning("no class averages found beside %s: NCC and streak metrics left out",
                       star_path)

    def render(species, rotations):
        from cryoclass.simulation.dataset import simulator_from_truth

        return simulator_from_truth(truth_path).clean_projection(species, rotations)

    out.update(hard_metrics(truth, idx, cls, psi, averages, render, lowpass_A))
    return out


def main_evaluate(truth: str, star: str, json_path: str | None = None,
                  classes: str | None = None, lowpass_A: float = NCC_LOWPASS_A) -> int:
    """Print (and optionally save) the metrics."""
    r = evaluate_star(Path(truth), Path(star), Path(classes) if classes else None, lowpass_A)
    print(json.dumps(r, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(r, indent=2))
    return 0
