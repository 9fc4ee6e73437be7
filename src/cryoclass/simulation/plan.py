"""The per-particle plan: every random scalar of a data set, drawn up front.

Drawing all scalars first (O(N) numbers, cheap) and only the images in chunks makes the
output independent of the chunk size. All randomness comes from
``numpy.random.SeedSequence(seed, spawn_key=(stream, ...))`` with the fixed stream keys
below, so each part (views, plan, noise blocks, junk details, calibration) has its own
reproducible stream.

Rows are sorted by micrograph (one image stack per micrograph) and shuffled within each
micrograph so that a duplicate is not next to its original.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from cryoclass.simulation.params import JUNK_TYPES, SimulationParams
from cryoclass.simulation.views import (
    candidate_views,
    random_filament_rotations,
    random_rotations,
    select_distinct,
)

logger = logging.getLogger(__name__)

# Independent random streams (spawn keys of SeedSequence(seed)).
STREAM_VIEWS = 1
STREAM_PLAN = 2
STREAM_NOISE = 3
STREAM_JUNK = 4
STREAM_CALIBRATION = 5
STREAM_CONTRAST = 6

#: Distance between the picks of a duplicate and its original (Å).
DUPLICATE_DISTANCE_A = (20.0, 60.0)


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """Return the generator of stream ``key`` (e.g. ``(STREAM_NOISE, block)``) of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


#: Random candidate views per species from which the discrete views are chosen.
N_VIEW_CANDIDATES = 96


def species_views(params: SimulationParams, is_filament: list[bool], render) -> list[np.ndarray]:
    """Discrete view rotations of each species, list of (views_per_species, 3, 3).

    The views are the most mutually different (after in-plane rotation) among
    :data:`N_VIEW_CANDIDATES` random candidates (``render(k, rotations) -> (m, n, n)``
    gives the candidate projections). Empty (0, 3, 3) arrays when views are continuous.
    """
    out = []
    for k, fil in enumerate(is_filament):
        if params.views_per_species == 0:
            out.append(np.zeros((0, 3, 3)))
            continue
        rng = rng_for(params.seed, STREAM_VIEWS, k)
        n_cand = max(N_VIEW_CANDIDATES, 4 * params.views_per_species)
        cand = candidate_views(rng, n_cand, filament=fil)
        out.append(cand[select_distinct(render(k, cand), params.views_per_species)])
    return out


@dataclass
class Poses:
    """Random poses and CTF of a set of objects (arrays of length m)."""

    species: np.ndarray  # (m,) int, -1 = none
    view_index: np.ndarray  # (m,) int, -1 = continuous / none
    rotation: np.ndarray  # (m, 3, 3) view rotation R_v
    psi_deg: np.ndarray  # (m,)
    shift_px: np.ndarray  # (m, 2) (x, y)
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    defocus_angle_deg: np.ndarray


def draw_poses(rng: np.random.Generator, m: int, params: SimulationParams,
               views: list[np.ndarray], is_filament: list[bool]) -> Poses:
    """Draw species, view, psi, shift and defocus for ``m`` real particles."""
    n_sp = params.n_species
    frac = np.ones(n_sp) if params.species_fractions is None else np.asarray(
        params.species_fractions, dtype=float)
    species = rng.choice(n_sp, size=m, p=frac / frac.sum()).astype(np.int32)
    rotation = np.empty((m, 3, 3))
    if params.views_per_species > 0:
        view_index = rng.integers(0, params.views_per_species, m).astype(np.int32)
        for k in range(n_sp):
            sel = species == k
            rotation[sel] = views[k][view_index[sel]]
    else:
        view_index = np.full(m, -1, dtype=np.int32)
        glob = random_rotations(rng, m)
        fil = random_filament_rotations(rng, m)
        fil_mask = np.asarray(is_filament)[species]
        rotation[:] = np.where(fil_mask[:, None, None], fil, glob)
    psi_deg = rng.uniform(0.0, 360.0, m)
    sig = params.shift_sigma_px
    shift = np.clip(rng.standard_normal((m, 2)) * sig, -3 * sig, 3 * sig)
    lo, hi = params.defocus_range_A
    du = rng.uniform(lo, hi, m)
    dv = du - rng.uniform(0.0, params.astig_max_A, m)
    ang = rng.uniform(0.0, 180.0, m)
    if not params.ctf:
        du, dv, ang = np.zeros(m), np.zeros(m), np.zeros(m)
    return Poses(species, view_index, rotation, psi_deg, shift, du, dv, ang)


@dataclass
class Plan:
    """Per-row truth of a data set (length N = n_particles, rows in STAR order)."""

    species: np.ndarray  # (N,) int32, -1 for junk
    source_species: np.ndarray  # (N,) int32: species whose projection is in the image
    junk_code: np.ndarray  # (N,) int8, -1 real, else index into JUNK_TYPES
    view_index: np.ndarray  # (N,) int32
    rotation: np.ndarray  # (N, 3, 3) view rotation R_v
    psi_deg: np.ndarray  # (N,)
    shift_px: np.ndarray  # (N, 2) true shift t (x, y) in px
    contrast: np.ndarray  # (N,) signal factor of the physical object (1 without a spread)
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    defocus_angle_deg: np.ndarray
    micrograph: np.ndarray  # (N,) int32
    location_px: np.ndarray  # (N, 2) picked location (x, y), micrograph px
    duplicate_of: np.ndarray  # (N,) int64 row of the original, -1 otherwise
    object_id: np.ndarray  # (N,) int64 physical object (shared by duplicates)
    index_in_stack: np.ndarray  # (N,) int32, 0-based
    n_micrographs: int

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.species.shape[0])

    @property
    def centre_px(self) -> np.ndarray:
        """True particle centre (x, y) in micrograph px: location + shift."""
        return self.location_px + self.shift_px

    @property
    def junk_type(self) -> np.ndarray:
        """Junk type names (N,) object array; ``""`` for real particles."""
        names = np.array(("",) + JUNK_TYPES, dtype=object)
        return names[self.junk_code.astype(np.int64) + 1]


def _layout(params: SimulationParams) -> tuple[int, int, float, int]:
    """Micrograph grid: (cells per side, particles per micrograph, cell px, edge px).

    Objects sit in distinct cells of a grid, jittered by at most a quarter of the
    required gap ``D`` (particle diameter + room for both shifts and an off-centre
    offset), so true centres of different objects are at least a particle diameter apart.
    """
    box = params.box_px
    gap = (params.particle_diameter_px + 6.0 * params.shift_sigma_px
           + params.off_centre_range[1] * box)
    cell = 1.5 * gap
    edge = box // 2 + int(math.ceil(DUPLICATE_DISTANCE_A[1] / params.pixel_size_A)) + 2
    g = int((params.micrograph_size_px - 2 * edge) // cell)
    if g < 1:
        from cryoclass.errors import InputError

        raise InputError(f"simulate: micrograph of {params.micrograph_size_px} px is too small "
                         f"for box {box} px")
    per_mic = min(params.particles_per_micrograph, g * g)
    if per_mic < params.particles_per_micrograph:
        logger.warning("only %d non-overlapping particles fit on a %d px micrograph "
                       "(asked %d); using %d per micrograph", g * g,
                       params.micrograph_size_px, params.particles_per_micrograph, per_mic)
    return g, per_mic, cell, edge


def make_plan(params: SimulationParams, views: list[np.ndarray],
              is_filament: list[bool]) -> Plan:
    """Draw the whole per-row plan (O(N) memory, no images)."""
    rng = rng_for(params.seed, STREAM_PLAN)
    n_rows = params.n_particles
    n_junk = int(round(params.junk_fraction * n_rows))
    n_real_rows = n_rows - n_junk
    n_orig = int(round(n_real_rows / (1.0 + params.duplicate_fraction)))
    n_dup = n_real_rows - n_orig
    if n_orig == 0 and n_dup > 0:
        n_orig, n_dup = n_dup, 0
    n_obj = n_orig + n_junk
    # own stream: a spread leaves every other draw of the seed as it was
    s_c = params.contrast_sd
    contrast = np.exp(s_c * rng_for(params.seed, STREAM_CONTRAST).standard_normal(n_obj)
                      - s_c * s_c) if s_c > 0 else np.ones(n_obj)

    # physical objects: originals first, then junk
    poses = draw_poses(rng, n_obj, params, views, is_filament)
    species = poses.species.copy()
    source = poses.species.copy()
    junk_code = np.full(n_obj, -1, dtype=np.int8)
    # the chosen kinds, equally likely (the default four give the original draws)
    kinds = np.array([JUNK_TYPES.index(t) for t in params.junk_types], dtype=np.int8)
    junk_code[n_orig:] = kinds[rng.integers(0, kinds.size, n_junk)]
    species[n_orig:] = -1
    off = junk_code == JUNK_TYPES.index("off_centre")
    other_junk = (junk_code >= 0) & ~off
    source[other_junk] = -1
    view_index = poses.view_index.copy()
    view_index[n_orig:] = np.where(off[n_orig:], view_index[n_orig:], -1)
    rotation = poses.rotation
    rotation[other_junk] = np.eye(3)
    psi = poses.psi_deg
    psi[other_junk] = 0.0
    shift = poses.shift_px
    shift[other_junk] = 0.0
    n_off = int(off.sum())
    rad = rng.uniform(*params.off_centre_range, n_off) * params.box_px
    ang = rng.uniform(0.0, 2 * np.pi, n_off)
    unit = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if params.off_centre_edge:  # distance in the max-norm: the centre lies near an edge
        unit /= np.abs(unit).max(axis=1, keepdims=True)
    shift[off] = rad[:, None] * unit

    # micrographs: shuffled objects, groups of per_mic, distinct jittered grid cells
    g, per_mic, cell, edge = _layout(params)
    order = rng.permutation(n_obj)
    mic_of_obj = np.empty(n_obj, dtype=np.int32)
    mic_of_obj[order] = (np.arange(n_obj) // per_mic).astype(np.int32)
    n_mic = int(mic_of_obj.max()) + 1 if n_obj else 0
    slot = np.empty(n_obj, dtype=np.int64)
    cells = np.empty(n_obj, dtype=np.int64)
    for m in range(n_mic):
        count = min(per_mic, n_obj - m * per_mic)
        cells[m * per_mic: m * per_mic + count] = rng.choice(g * g, size=count, replace=False)
    slot[order] = cells
    jitter = (cell - (cell / 1.5)) / 2.0  # = gap / 4
    cx = edge + (slot % g + 0.5) * cell + rng.uniform(-jitter, jitter, n_obj)
    cy = edge + (slot // g + 0.5) * cell + rng.uniform(-jitter, jitter, n_obj)
    loc = np.rint(np.stack([cx, cy], axis=1))

    # duplicates: second picks of n_dup originals, 2-6 nm from the first pick
    orig = np.sort(rng.choice(n_orig, size=n_dup, replace=False)) if n_dup else np.zeros(
        0, dtype=np.int64)
    margin_A = 0.75 * params.pixel_size_A  # rounding to integer px moves a pick <= 0.71 px
    d_lo = DUPLICATE_DISTANCE_A[0] + margin_A
    d_hi = max(d_lo, DUPLICATE_DISTANCE_A[1] - margin_A)
    dist_px = rng.uniform(d_lo, d_hi, n_dup) / params.pixel_size_A
    dang = rng.uniform(0.0, 2 * np.pi, n_dup)
    dloc = loc[orig] + np.rint(np.stack([dist_px * np.cos(dang), dist_px * np.sin(dang)], 1))
    true_centre = loc + shift
    dshift = true_centre[orig] - dloc

    def cat(a, b):
        return np.concatenate([a, b], axis=0)

    obj_id = cat(np.arange(n_obj), orig)
    all_mic = mic_of_obj[obj_id]
    is_dup = cat(np.zeros(n_obj, bool), np.ones(n_dup, bool))

    # row order: by micrograph, shuffled within; keep duplicates off their original
    key = rng.random(n_rows)
    for _ in range(20):
        row_order = np.lexsort((key, all_mic))
        pos = np.empty(n_rows, dtype=np.int64)
        pos[row_order] = np.arange(n_rows)
        dup_rows = np.nonzero(is_dup)[0]
        adjacent = np.abs(pos[dup_rows] - pos[obj_id[dup_rows]]) == 1
        if not adjacent.any():
            break
        key[dup_rows[adjacent]] = rng.random(int(adjacent.sum()))
    pos = np.empty(n_rows, dtype=np.int64)
    pos[row_order] = np.arange(n_rows)

    def rows(a):
        return a[row_order]

    dup_of = np.full(n_rows, -1, dtype=np.int64)
    dup_src = np.nonzero(is_dup)[0]
    dup_of[pos[dup_src]] = pos[obj_id[dup_src]]
    mic_sorted = rows(all_mic)
    first = np.searchsorted(mic_sorted, mic_sorted, side="left")
    index_in_stack = (np.arange(n_rows) - first).astype(np.int32)
    logger.info("plan: %d rows = %d particles + %d duplicates + %d junk on %d micrographs",
                n_rows, n_orig, n_dup, n_junk, n_mic)
    return Plan(
        species=rows(species[obj_id]).astype(np.int32),
        source_species=rows(source[obj_id]).astype(np.int32),
        junk_code=rows(junk_code[obj_id]),
        view_index=rows(view_index[obj_id]).astype(np.int32),
        rotation=rows(rotation[obj_id]),
        psi_deg=rows(psi[obj_id]),
        shift_px=rows(cat(shift, dshift)),
        contrast=rows(contrast[obj_id]),
        defocus_u_A=rows(poses.defocus_u_A[obj_id]),
        defocus_v_A=rows(poses.defocus_v_A[obj_id]),
        defocus_angle_deg=rows(poses.defocus_angle_deg[obj_id]),
        micrograph=mic_sorted.astype(np.int32),
        location_px=rows(cat(loc, dloc)),
        duplicate_of=dup_of,
        object_id=rows(obj_id).astype(np.int64),
        index_in_stack=index_in_stack,
        n_micrographs=n_mic,
    )
