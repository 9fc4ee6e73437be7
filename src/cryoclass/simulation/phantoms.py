"""Pseudo-atomic 3D phantoms: sums of isotropic 3D Gaussian "atoms".

Each globular phantom is a few ellipsoidal domains of different sizes filled with atoms
at a constant number density, so that heavier domains project darker and its views differ
clearly. The filament is a one-start helix of small asymmetric subunits along the object
x axis. Phantoms do not depend on the random seed: species ``k`` always has the same shape.

All coordinates are in Å, centred on the centre of mass; a projection along z of an atom
of weight ``w`` and width ``sigma`` is the 2D Gaussian ``w / (2 pi sigma^2) exp(-r^2 / (2
sigma^2))`` (see :mod:`cryoclass.simulation.render`).

Examples
--------
>>> ph = make_phantoms(n_species=3, diameter_A=105.6, box_A=192.0, pixel_size_A=3.0)
>>> [p.name for p in ph]
['tri_domain', 'dumbbell_knob', 'four_lobe']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoclass.errors import InputError
from cryoclass.simulation.params import PDB_PREFIX, model_path

logger = logging.getLogger(__name__)

#: Atoms per unit volume, in units of the particle diameter cubed.
ATOM_DENSITY = 18000.0
#: Atom width as a fraction of the particle diameter (raised to >= 1 px when rendered).
ATOM_SIGMA_FRACTION = 0.022
#: Atom density and width of the dense named designs (``asym_five``).
DENSE_ATOM_DENSITY = 45000.0
DENSE_SIGMA_FRACTION = 0.028
#: Atoms per helix-like rod and their spacing (units of the diameter).
ROD_ATOMS = 10
ROD_SPACING = 0.018
#: Base seed of the (seed-independent) phantom atom positions.
_PHANTOM_SEED = 20240517
#: Atom width of a model read from a PDB file (Å; raised to >= 1 px when rendered).
PDB_ATOM_SIGMA_A = 1.0
#: Electrons per element (the atom's weight in a PDB phantom); others count as carbon.
ELECTRONS = {"H": 1, "C": 6, "N": 7, "O": 8, "NA": 11, "MG": 12, "P": 15, "S": 16,
             "CL": 17, "K": 19, "CA": 20, "MN": 25, "FE": 26, "CO": 27, "NI": 28,
             "CU": 29, "ZN": 30, "SE": 34}

# Globular designs: domains (centre xyz, semi-axes abc) in units of the diameter, plus
# straight linkers (start, end, radius) between domains.
_DESIGNS: dict[str, dict] = {
    "tri_domain": {  # an L of three unequal domains
        "domains": [((-0.22, -0.12, 0.00), (0.17, 0.13, 0.12)),
                    ((0.20, -0.16, 0.06), (0.12, 0.10, 0.09)),
                    ((0.16, 0.24, -0.08), (0.08, 0.08, 0.07))],
        "linkers": [((-0.06, -0.14, 0.03), (0.09, -0.15, 0.05), 0.035),
                    ((0.19, -0.06, 0.02), (0.17, 0.17, -0.05), 0.03)],
    },
    "dumbbell_knob": {  # two unequal lobes on a rod, a knob off the axis
        "domains": [((-0.25, 0.00, 0.00), (0.15, 0.14, 0.13)),
                    ((0.25, 0.04, 0.02), (0.11, 0.10, 0.10)),
                    ((0.00, 0.07, 0.20), (0.07, 0.06, 0.07))],
        "linkers": [((-0.10, 0.0, 0.0), (0.15, 0.03, 0.01), 0.045),
                    ((0.0, 0.01, 0.0), (0.0, 0.06, 0.15), 0.03)],
    },
    "four_lobe": {  # a core with three unequal satellites
        "domains": [((0.00, 0.00, 0.00), (0.13, 0.12, 0.11)),
                    ((0.24, 0.16, 0.04), (0.09, 0.08, 0.08)),
                    ((-0.20, 0.20, -0.10), (0.07, 0.10, 0.06)),
                    ((0.06, -0.26, 0.14), (0.11, 0.07, 0.08))],
        "linkers": [((0.0, 0.0, 0.0), (0.18, 0.12, 0.03), 0.03),
                    ((0.0, 0.0, 0.0), (-0.15, 0.15, -0.08), 0.03),
                    ((0.0, 0.0, 0.0), (0.05, -0.19, 0.10), 0.03)],
    },
    "arc_knob": {  # a three-quarter ring with a knob at one end
        "arc": ((0.0, 0.0, 0.0), 0.24, 0.075, 1.5 * np.pi),
        "domains": [((0.24, -0.05, 0.05), (0.10, 0.09, 0.11))],
        "linkers": [],
    },
}


# Designs chosen by name only (``SimulationParams.phantoms``), each with its own seed, so
# that the numbered library above (and ``procedural_k``) stays unchanged.
_NAMED_DESIGNS: dict[str, tuple[int, dict]] = {
    # The hard benchmark's particle: five unequal domains, not coplanar, no symmetry, so
    # views from different directions differ clearly (docs/accuracy.md measures it).
    # Denser and wider atoms than the library: smoother, protein-like domains at 4 Å/px.
    "asym_five": (1000, {
        "domains": [((-0.05, 0.02, 0.00), (0.12, 0.10, 0.09)),
                    ((0.22, 0.10, -0.02), (0.11, 0.08, 0.09)),
                    ((-0.22, 0.18, 0.06), (0.09, 0.08, 0.07)),
                    ((0.02, -0.22, 0.12), (0.10, 0.07, 0.08)),
                    ((0.08, 0.02, -0.24), (0.06, 0.05, 0.07))],
        "linkers": [],
        "density": DENSE_ATOM_DENSITY,
        "sigma_fraction": DENSE_SIGMA_FRACTION,
    }),
}


@dataclass(frozen=True)
class Phantom:
    """A pseudo-atomic density.

    Attributes
    ----------
    name : str
        Design name.
    coords_A : ndarray (n_atoms, 3)
        Atom centres (x, y, z) in Å, centre of mass at the origin.
    sigma_A : ndarray (n_atoms,)
        Atom Gaussian widths in Å.
    weight : ndarray (n_atoms,)
        Atom masses (arbitrary units; the signal is rescaled to the requested SNR).
    is_filament : bool
        True for the helical filament (axis along object x).
    """

    name: str
    coords_A: np.ndarray
    sigma_A: np.ndarray
    weight: np.ndarray
    is_filament: bool = False

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.coords_A.shape[0])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random 3x3 rotation (from a normalised Gaussian quaternion)."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _uniform_ball(rng, n: int) -> np.ndarray:
    """``n`` points uniform in the unit ball, (n, 3)."""
    u = rng.standard_normal((n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u * rng.uniform(0.0, 1.0, (n, 1)) ** (1.0 / 3.0)


def _fill_ellipsoid(rng, centre, semi_axes, rods: bool = True,
                    density: float = ATOM_DENSITY) -> np.ndarray:
    """Atoms inside a randomly oriented ellipsoid, count set by the density.

    With ``rods``, atoms come in short straight runs (helix-like rods of
    :data:`ROD_ATOMS` atoms, :data:`ROD_SPACING` apart, random directions) whose centres
    are uniform in the ellipsoid: projections then have protein-like internal texture.
    """
    a = np.asarray(semi_axes, dtype=float)
    n = max(4, int(round(density * 4.0 / 3.0 * np.pi * np.prod(a))))
    if not rods:
        pts = _uniform_ball(rng, n) * a
    else:
        n_rods = max(1, n // ROD_ATOMS)
        centres = _uniform_ball(rng, n_rods) * a
        d = rng.standard_normal((n_rods, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        steps = (np.arange(ROD_ATOMS) - (ROD_ATOMS - 1) / 2.0) * ROD_SPACING
        pts = (centres[:, None, :] + steps[None, :, None] * d[:, None, :]).reshape(-1, 3)
    return pts @ _random_rotation(rng).T + np.asarray(centre, dtype=float)


def _fill_rod(rng, start, end, radius, density: float = ATOM_DENSITY) -> np.ndarray:
    """Atoms uniform inside a cylinder from ``start`` to ``end``."""
    p0, p1 = np.asarray(start, float), np.asarray(end, float)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    n = max(3, int(round(density * np.pi * radius**2 * length)))
    t = rng.uniform(0.0, 1.0, (n, 1))
    # two unit vectors orthogonal to the axis
    e = axis / length
    helper = np.array([1.0, 0.0, 0.0]) if abs(e[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(e, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e, e1)
    r = radius * np.sqrt(rng.uniform(0.0, 1.0, (n, 1)))
    phi = rng.uniform(0.0, 2 * np.pi, (n, 1))
    return p0 + t * axis + r * (np.cos(phi) * e1 + np.sin(phi) * e2)


def _fill_arc(rng, centre, arc_radius, tube_radius, arc_angle) -> np.ndarray:
    """Atoms inside a torus segment (in the xy plane) of angle ``arc_angle``."""
    n = max(8, int(round(ATOM_DENSITY * np.pi * tube_radius**2 * arc_radius * arc_angle)))
    theta = rng.uniform(0.0, arc_angle, n)
    r = tube_radius * np.sqrt(rng.uniform(0.0, 1.0, n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    rad = arc_radius + r * np.cos(phi)
    return np.stack([rad * np.cos(theta), rad * np.sin(theta), r * np.sin(phi)], axis=1) + centre


def _random_design(rng: np.random.Generator) -> dict:
    """Make a procedural design (species beyond the library): 3-5 unequal domains."""
    n_dom = int(rng.integers(3, 6))
    domains = []
    centre = np.zeros(3)
    for i in range(n_dom):
        size = 0.17 * (0.85**i) * rng.uniform(0.8, 1.2)
        axes = size * rng.uniform(0.7, 1.2, 3)
        if i > 0:
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            centre = domains[int(rng.integers(0, i))][0] + d * (size + 0.12)
        domains.append((np.asarray(centre), axes))
    return {"domains": [(tuple(c), tuple(a)) for c, a in domains], "linkers": []}


def _normalise(coords: np.ndarray, sigma: float, diameter: float) -> np.ndarray:
    """Centre on the mean and scale so that max radius + 2 sigma = diameter / 2."""
    coords = coords - coords.mean(axis=0)
    r_max = float(np.sqrt((coords**2).sum(axis=1)).max())
    return coords * ((0.5 * diameter - 2.0 * sigma) / r_max)


def globular_phantom(index: int, diameter_A: float) -> Phantom:
    """Globular phantom number ``index`` with the given largest extent in Å.

    Indices 0-3 are fixed designs (``tri_domain``, ``dumbbell_knob``, ``four_lobe``,
    ``arc_knob``); larger indices are procedural but equally deterministic.
    """
    rng = np.random.default_rng([_PHANTOM_SEED, index])
    names = list(_DESIGNS)
    if index < len(names):
        name, design = names[index], _DESIGNS[names[index]]
    else:
        name, design = f"procedural_{index}", _random_design(rng)
    return _build(name, design, rng, diameter_A)


def named_phantom(name: str, diameter_A: float) -> Phantom:
    """Globular phantom by design name (library, ``asym_five``, ``procedural_<i>``) or model.

    ``pdb:PATH`` reads an atomic model at its own size (:func:`pdb_phantom`);
    ``diameter_A`` scales the designs only.
    """
    model = model_path(name)
    if model is not None:
        return pdb_phantom(model)
    if name in _NAMED_DESIGNS:
        index, design = _NAMED_DESIGNS[name]
        return _build(name, design, np.random.default_rng([_PHANTOM_SEED, index]), diameter_A)
    if name in _DESIGNS:
        return globular_phantom(list(_DESIGNS).index(name), diameter_A)
    if name.startswith("procedural_") and name[len("procedural_"):].isdigit():
        return globular_phantom(int(name[len("procedural_"):]), diameter_A)
    raise ValueError(f"unknown phantom design {name!r}")


def read_pdb_atoms(path) -> tuple[np.ndarray, np.ndarray]:
    """Atom coordinates (n, 3) in Å and electron counts (n,) of a PDB file.

    Reads the ``ATOM`` and ``HETATM`` records of the first model (``ENDMDL`` ends it);
    a name ending in ``.gz`` or ``.bz2`` is decompressed. The element is columns 77-78,
    else the first letter of the atom name; its weight is :data:`ELECTRONS` (carbon's
    for an element not listed).

    Raises
    ------
    InputError
        The file holds no atom records or a coordinate does not parse.
    """
    import bz2
    import gzip

    path = Path(path)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    coords, weights = [], []
    with opener(path, "rt", errors="replace") as fh:
        for line in fh:
            if line.startswith("ENDMDL") and coords:
                break
            if not line.startswith(("ATOM  ", "HETATM")):
                continue
            try:
                coords.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
            except ValueError:
                raise InputError(f"{path}: bad coordinates in {line.rstrip()!r}") from None
            element = line[76:78].strip().upper() or line[12:16].strip()[:1].upper()
            weights.append(ELECTRONS.get(element, ELECTRONS["C"]))
    if not coords:
        raise InputError(f"{path}: no ATOM or HETATM records")
    return np.asarray(coords, dtype=np.float64), np.asarray(weights, dtype=np.float64)


def pdb_phantom(path) -> Phantom:
    """Phantom of an atomic model (PDB file) at its own size, centred on its centre of mass.

    Each atom is a Gaussian of width :data:`PDB_ATOM_SIGMA_A` weighted by its electrons
    (:func:`read_pdb_atoms`); :func:`make_phantoms` raises the widths to one pixel.

    Examples
    --------
    >>> ph = pdb_phantom("6msm.pdb.bz2")                            # doctest: +SKIP
    >>> ph.name
    'pdb:6msm'
    """
    coords, weight = read_pdb_atoms(path)
    coords = coords - (weight[:, None] * coords).sum(axis=0) / weight.sum()
    stem = Path(path).name.split(".")[0]
    return Phantom(f"{PDB_PREFIX}{stem}", coords, np.full(len(weight), PDB_ATOM_SIGMA_A), weight)


def phantom_extent_A(phantom: Phantom) -> float:
    """Largest extent of a phantom: twice its largest atom radius plus 2 sigma (Å)."""
    r = np.sqrt((phantom.coords_A**2).sum(axis=1)) + 2.0 * phantom.sigma_A
    return float(2.0 * r.max())


def _build(name: str, design: dict, rng: np.random.Generator, diameter_A: float) -> Phantom:
    """Fill a design's domains, linkers and arc with atoms; centre and scale to ``diameter_A``.

    A design may set its own ``density`` (atoms per D³) and ``sigma_fraction`` (atom
    width / D); the numbered library uses :data:`ATOM_DENSITY` and
    :data:`ATOM_SIGMA_FRACTION`.
    """
    density = design.get("density", ATOM_DENSITY)
    sigma_fraction = design.get("sigma_fraction", ATOM_SIGMA_FRACTION)
    parts = [_fill_ellipsoid(rng, c, a, density=density) for c, a in design["domains"]]
    parts += [_fill_rod(rng, s, e, r, density=density) for s, e, r in design["linkers"]]
    if "arc" in design:
        parts.append(_fill_arc(rng, *design["arc"]))
    coords = np.concatenate(parts, axis=0)
    sigma = sigma_fraction * diameter_A
    coords_A = _normalise(coords, sigma_fraction, 1.0) * diameter_A
    n = coords_A.shape[0]
    return Phantom(name, coords_A, np.full(n, sigma), np.ones(n))


def filament_phantom(diameter_A: float, length_A: float) -> Phantom:
    """Helical filament along object x: width 0.45 diameter, ``length_A`` long.

    A one-start helix (radius 0.3 W, rise 0.12 W, twist 40 deg, W the width) of
    subunits, each an asymmetric cluster of 12 atoms; the centre of mass is at the origin.
    """
    rng = np.random.default_rng([_PHANTOM_SEED, 9999])
    width = 0.45 * diameter_A
    helix_r, rise, twist = 0.30 * width, 0.12 * width, np.deg2rad(40.0)
    sub_r = 0.20 * width
    # one subunit: a lopsided blob (an elongated lobe plus a small knob)
    lobe = _uniform_ball(rng, 9) * np.array([1.0, 0.6, 0.5])
    knob = _uniform_ball(rng, 3) * 0.3 + np.array([0.9, 0.5, 0.0])
    sub = np.concatenate([lobe, knob]) * sub_r
    n_sub = max(2, int(length_A // rise))
    parts = []
    for i in range(n_sub):
        ang = i * twist
        c, s = np.cos(ang), np.sin(ang)
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])  # about x
        centre = np.array([i * rise, helix_r * c, helix_r * s])
        parts.append(sub @ rot.T + centre)
    coords = np.concatenate(parts)
    coords -= coords.mean(axis=0)
    n = coords.shape[0]
    return Phantom("filament", coords, np.full(n, ATOM_SIGMA_FRACTION * diameter_A),
                   np.ones(n), is_filament=True)


def make_phantoms(
    n_species: int,
    diameter_A: float,
    box_A: float,
    pixel_size_A: float,
    include_filament: bool = False,
    designs: tuple[str, ...] | None = None,
) -> list[Phantom]:
    """Phantoms of all species; the filament (if any) is the last one.

    Atom widths are raised to at least one pixel so that every projection is
    band-limited (the Gaussian's transform at Nyquist is below ``exp(-pi^2 / 2)``).

    Parameters
    ----------
    n_species : int
        Number of species, the filament included.
    diameter_A : float
        Largest extent of the globular phantoms in Å.
    box_A : float
        Box size in Å (the filament spans 0.9 of it).
    pixel_size_A : float
        Pixel size in Å (sets the minimum atom width).
    include_filament : bool
        Make the last species the filament.
    designs : tuple of str, optional
        Design name of each globular species (see :func:`named_phantom`); default the
        numbered library in order.
    """
    n_glob = n_species - 1 if include_filament else n_species
    if designs is None:
        out = [globular_phantom(i, diameter_A) for i in range(n_glob)]
    else:
        out = [named_phantom(name, diameter_A) for name in designs[:n_glob]]
    if include_filament:
        out.append(filament_phantom(diameter_A, 0.9 * box_A))
    final = [pixel_limited(p, pixel_size_A) for p in out]
    for p in final:
        if p.name.startswith(PDB_PREFIX):  # a model keeps its size: say if --diameter differs
            extent = phantom_extent_A(p)
            if abs(extent - diameter_A) > 0.25 * diameter_A:
                logger.warning("atomic model %s spans %.0f Å; the particle diameter is %.0f Å "
                               "(--diameter)", p.name, extent, diameter_A)
        logger.debug("phantom %s: %d atoms, sigma %.2f Å", p.name, p.n_atoms, p.sigma_A[0])
    return final


def pixel_limited(phantom: Phantom, pixel_size_A: float) -> Phantom:
    """``phantom`` with its atom widths raised to at least one pixel (band-limited projections)."""
    return Phantom(phantom.name, phantom.coords_A, np.maximum(phantom.sigma_A, pixel_size_A),
                   phantom.weight, phantom.is_filament)
