"""Simulation parameters, their validation and the ``cryoclass simulate`` flags.

Examples
--------
>>> p = SimulationParams(n_particles=100, box_px=64)
>>> p.particle_diameter_px
35.2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass

from cryoclass.errors import InputError

#: Fraction of the box (in Å) used as the particle diameter when none is given.
DEFAULT_DIAMETER_FRACTION = 0.55
#: Junk categories (truth ``junk_type``), in code order; real particles have ``""``.
JUNK_TYPES = ("noise", "ice_gradient", "off_centre", "aggregate", "broken", "other_particle")
#: The junk mix when none is chosen (the four original kinds, equally likely).
DEFAULT_JUNK_TYPES = ("noise", "ice_gradient", "off_centre", "aggregate")
#: Prefix of an atomic-model phantom, ``pdb:PATH`` (see :func:`.phantoms.pdb_phantom`).
PDB_PREFIX = "pdb:"
#: Phantom designs by name (species k gets the k-th name; see :mod:`.phantoms`).
PHANTOM_DESIGNS = ("tri_domain", "dumbbell_knob", "four_lobe", "arc_knob", "asym_five")

#: Named parameter sets (``--preset NAME``); explicit flags override them.
#: ``hard``: the accuracy benchmark of ``docs/accuracy.md`` (issue 11): one asymmetric
#: species of 170 Å in a 64 px box at 4 Å/px (66% of the box), continuous uniformly random
#: 3D views, SNR 0.05, 20% junk of three kinds, 2% duplicate picks, astigmatic CTF.
PRESETS: dict[str, dict] = {
    "hard": {
        "n_particles": 4000,
        "box_px": 64,
        "pixel_size_A": 4.0,
        "particle_diameter_A": 170.0,
        "n_species": 1,
        "phantoms": ("asym_five",),
        "views_per_species": 0,
        "snr": 0.05,
        "junk_fraction": 0.2,
        "junk_types": ("noise", "off_centre", "broken"),
        "off_centre_range": (0.4, 0.5),
        "off_centre_edge": True,
        "duplicate_fraction": 0.02,
        "shift_sigma_px": 2.0,
        "defocus_range_A": (10000.0, 25000.0),
        "astig_max_A": 1000.0,
    },
}


@dataclass(frozen=True)
class SimulationParams:
    """Everything that defines a simulated data set (with ``seed``, it is reproducible).

    Attributes
    ----------
    n_particles : int
        Number of particle images (rows of the STAR file), junk and duplicates included.
    box_px : int
        Image box size in pixels.
    pixel_size_A : float
        Pixel size in Å.
    particle_diameter_A : float or None
        Largest extent of the globular phantoms in Å; ``None`` = 0.55 of the box in Å.
    n_species : int
        Number of distinct particle species (the filament included when requested).
    phantoms : tuple of str or None
        Design name of each globular species (from :data:`PHANTOM_DESIGNS`, or
        ``procedural_<i>``); ``None`` = the library in order (tri_domain, dumbbell_knob, ...).
    species_fractions : tuple of float or None
        Relative abundance of each species (normalised); ``None`` = equal.
    include_filament : bool
        Make the last species a helical filament spanning most of the box.
    views_per_species : int
        Discrete out-of-plane views per species; 0 = uniformly random 3D orientations.
    snr : float
        Mean (over real particles) CTF-modulated signal variance over the box divided by
        the noise variance.
    junk_fraction : float
        Fraction of the rows that are junk.
    junk_types : tuple of str
        Kinds of junk, equally likely (:data:`JUNK_TYPES`); default the four original
        kinds (noise, ice_gradient, off_centre, aggregate).
    off_centre_range : tuple of float
        Distance of an off-centre junk particle's centre from the box centre, uniform in
        this range (fractions of the box).
    off_centre_edge : bool
        Measure that distance in the max-norm (``max(|x|, |y|)``), so every off-centre
        particle sits near an edge and crosses it; default the Euclidean distance.
    duplicate_fraction : float
        Fraction of the physical (non-junk) particles that are picked a second time.
    shift_sigma_px : float
        Standard deviation of the true in-plane shift per axis (px), clipped at 3 sigma.
    contrast_sd : float
        Spread of a per-object contrast factor (ice thickness, local dose): each
        particle's signal is multiplied by ``c = exp(s z - s^2)``, ``z ~ N(0, 1)``, so
        that ``E[c^2] = 1`` keeps the SNR; 0 (the default) gives every particle ``c = 1``.
    defocus_range_A : tuple of float
        Defocus U is uniform in this range (Å, underfocus positive).
    astig_max_A : float
        ``U - V`` is uniform in ``[0, astig_max_A]`` (Å).
    ctf : bool
        Apply the CTF; ``False`` writes CTF-off values (Q = 1, defocus 0, Cs 0).
    voltage_kv, cs_mm, amplitude_contrast : float
        Microscope optics used when ``ctf`` is on.
    noise_corner_A : float
        Resolution (Å) where the coloured noise power has fallen to half its excess.
    noise_floor : float
        White part of the noise power relative to the low-frequency excess.
    particles_per_micrograph : int
        Picks per micrograph (approximate; capped by what fits without overlap).
    micrograph_size_px : int
        Micrograph width and height in pixels.
    seed : int
        Random seed; the output does not depend on ``chunk``.
    chunk : int
        Particles generated and held in memory at a time.
    """

    n_particles: int = 1000
    box_px: int = 64
    pixel_size_A: float = 3.0
    particle_diameter_A: float | None = None
    n_species: int = 3
    phantoms: tuple[str, ...] | None = None
    species_fractions: tuple[float, ...] | None = None
    include_filament: bool = False
    views_per_species: int = 3
    snr: float = 0.05
    junk_fraction: float = 0.2
    junk_types: tuple[str, ...] = DEFAULT_JUNK_TYPES
    off_centre_range: tuple[float, float] = (0.35, 0.45)
    off_centre_edge: bool = False
    duplicate_fraction: float = 0.05
    shift_sigma_px: float = 2.0
    contrast_sd: float = 0.0
    defocus_range_A: tuple[float, float] = (10000.0, 25000.0)
    astig_max_A: float = 600.0
    ctf: bool = True
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    noise_corner_A: float = 30.0
    noise_floor: float = 0.25
    particles_per_micrograph: int = 100
    micrograph_size_px: int = 4096
    seed: int = 0
    chunk: int = 2000

    def __post_init__(self) -> None:
        """Normalise tuple fields and validate every value."""
        object.__setattr__(
            self, "defocus_range_A", tuple(float(v) for v in self.defocus_range_A)
        )
        object.__setattr__(
            self, "off_centre_range", tuple(float(v) for v in self.off_centre_range)
        )
        if self.species_fractions is not None:
            object.__setattr__(
                self, "species_fractions", tuple(float(v) for v in self.species_fractions)
            )
        if isinstance(self.junk_types, str):
            object.__setattr__(self, "junk_types", _names(self.junk_types))
        object.__setattr__(self, "junk_types", tuple(self.junk_types))
        if isinstance(self.phantoms, str):
            object.__setattr__(self, "phantoms", _names(self.phantoms))
        if self.phantoms is not None:
            object.__setattr__(self, "phantoms", tuple(_absolute_model(n) for n in self.phantoms))
        self.validate()

    # -- derived quantities -------------------------------------------------------
    @property
    def diameter_A(self) -> float:
        """Particle diameter in Å (explicit or 0.55 of the box)."""
        if self.particle_diameter_A is not None:
            return float(self.particle_diameter_A)
        return DEFAULT_DIAMETER_FRACTION * self.box_px * self.pixel_size_A

    @property
    def particle_diameter_px(self) -> float:
        """Particle diameter in pixels."""
        return round(self.diameter_A / self.pixel_size_A, 6)

    @property
    def ctf_values(self) -> dict[str, float]:
        """Optics written to the STAR file (CTF-off values when ``ctf`` is False)."""
        if self.ctf:
            return {
                "voltage_kv": self.voltage_kv,
                "cs_mm": self.cs_mm,
                "amplitude_contrast": self.amplitude_contrast,
            }
        return {"voltage_kv": self.voltage_kv, "cs_mm": 0.0, "amplitude_contrast": 1.0}

    def to_dict(self) -> dict:
        """Plain-JSON dictionary of all fields (the derived diameter included)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["defocus_range_A"] = list(self.defocus_range_A)
        d["off_centre_range"] = list(self.off_centre_range)
        if self.species_fractions is not None:
            d["species_fractions"] = list(self.species_fractions)
        if self.phantoms is not None:
            d["phantoms"] = list(self.phantoms)
        d["junk_types"] = list(self.junk_types)
        d["diameter_A_resolved"] = self.diameter_A
        return d

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict` (stored with every output)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    # -- validation ---------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`~cryoclass.errors.InputError` for any unusable value."""

        def bad(msg: str) -> None:
            raise InputError(f"simulate: {msg}")

        def finite(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, got {v!r}")
            return float(v)

        for name in ("n_particles", "box_px", "n_species", "views_per_species",
                     "particles_per_micrograph", "micrograph_size_px", "seed", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                bad(f"{name} must be an integer, got {v!r}")
        if self.n_particles <= 0:
            bad(f"number of particles must be > 0, got {self.n_particles}")
        if self.box_px < 16:
            bad(f"box must be at least 16 px, got {self.box_px}")
        if finite("pixel_size_A") <= 0:
            bad(f"pixel size must be > 0 Å, got {self.pixel_size_A}")
        if self.particle_diameter_A is not None:
            d = finite("particle_diameter_A")
            if d <= 0 or d > self.box_px * self.pixel_size_A:
                bad(f"particle diameter must be in (0, box size = "
                    f"{self.box_px * self.pixel_size_A:g} Å], got {d:g} Å")
        if self.n_species < 1:
            bad(f"number of species must be >= 1, got {self.n_species}")
        if self.species_fractions is not None:
            fr = self.species_fractions
            if len(fr) != self.n_species:
                bad(f"species fractions has {len(fr)} values for {self.n_species} species")
            if any((not math.isfinite(v)) or v < 0 for v in fr) or sum(fr) <= 0:
                bad(f"species fractions must be >= 0 with a positive sum, got {list(fr)}")
        if self.phantoms is not None:
            n_glob = self.n_species - (1 if self.include_filament else 0)
            if len(self.phantoms) != n_glob:
                bad(f"phantoms names {len(self.phantoms)} designs for {n_glob} globular "
                    f"species")
            for name in self.phantoms:
                model = model_path(name)
                if model is not None:
                    if not os.path.isfile(model):
                        bad(f"atomic model {model} not found")
                elif name not in PHANTOM_DESIGNS and not _is_procedural(name):
                    bad(f"unknown phantom {name!r}; choose from {', '.join(PHANTOM_DESIGNS)}, "
                        f"procedural_<i> or pdb:PATH")
        if not self.junk_types:
            bad("junk types must name at least one kind")
        for name in self.junk_types:
            if name not in JUNK_TYPES:
                bad(f"unknown junk type {name!r}; choose from {', '.join(JUNK_TYPES)}")
        oc = self.off_centre_range
        if len(oc) != 2 or not all(math.isfinite(v) for v in oc) or not 0 <= oc[0] <= oc[1] <= 1:
            bad(f"off-centre range must satisfy 0 <= min <= max <= 1 (box), got {list(oc)}")
        if len(set(self.junk_types)) != len(self.junk_types):
            bad(f"junk types repeat a kind: {list(self.junk_types)}")
        if self.views_per_species < 0:
            bad(f"views per species must be >= 0 (0 = random), got {self.views_per_species}")
        if finite("snr") <= 0:
            bad(f"snr must be > 0, got {self.snr}")
        for name in ("junk_fraction", "duplicate_fraction"):
            v = finite(name)
            if not 0.0 <= v < 1.0:
                bad(f"{name.replace('_', ' ')} must be in [0, 1), got {v}")
        if finite("shift_sigma_px") < 0:
            bad(f"shift sigma must be >= 0 px, got {self.shift_sigma_px}")
        if not 0.0 <= finite("contrast_sd") <= 1.0:
            bad(f"contrast spread must be in [0, 1], got {self.contrast_sd}")
        if len(self.defocus_range_A) != 2:
            bad(f"defocus range needs two values (min, max) in Å, got {self.defocus_range_A}")
        lo, hi = self.defocus_range_A
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo:
            bad(f"defocus range must satisfy 0 <= min <= max (Å), got {self.defocus_range_A}")
        if finite("astig_max_A") < 0:
            bad(f"astigmatism must be >= 0 Å, got {self.astig_max_A}")
        if self.ctf and self.astig_max_A > lo:
            bad(f"astigmatism ({self.astig_max_A:g} Å) must not exceed the minimum defocus "
                f"({lo:g} Å)")
        if finite("voltage_kv") <= 0:
            bad(f"voltage must be > 0 kV, got {self.voltage_kv}")
        if finite("cs_mm") < 0:
            bad(f"spherical aberration must be >= 0 mm, got {self.cs_mm}")
        if not 0.0 <= finite("amplitude_contrast") <= 1.0:
            bad(f"amplitude contrast must be in [0, 1], got {self.amplitude_contrast}")
        if finite("noise_corner_A") <= 0:
            bad(f"noise corner must be > 0 Å, got {self.noise_corner_A}")
        if finite("noise_floor") < 0:
            bad(f"noise floor must be >= 0, got {self.noise_floor}")
        if self.particles_per_micrograph < 1:
            bad(f"particles per micrograph must be >= 1, got {self.particles_per_micrograph}")
        if self.micrograph_size_px < 4 * self.box_px:
            bad(f"micrograph size must be at least 4 boxes ({4 * self.box_px} px), "
                f"got {self.micrograph_size_px}")
        if self.seed < 0:
            bad(f"seed must be >= 0, got {self.seed}")
        if self.chunk < 1:
            bad(f"chunk must be >= 1, got {self.chunk}")


def _is_procedural(name: str) -> bool:
    """Tell whether ``name`` is ``procedural_<i>`` with an integer ``i >= 0``."""
    head, _, tail = name.partition("_")
    return head == "procedural" and tail.isdigit()


def model_path(name: str) -> str | None:
    """Return the PATH of a phantom name ``pdb:PATH`` (an atomic model), else None."""
    return name[len(PDB_PREFIX):] if name.startswith(PDB_PREFIX) else None


def _absolute_model(name: str) -> str:
    """``pdb:PATH`` with PATH absolute (the truth file is read from anywhere); others as given."""
    model = model_path(name)
    return name if model is None else PDB_PREFIX + os.path.abspath(model)


def _names(text: str) -> tuple[str, ...]:
    """Parse ``"a,b,c"`` (or space separated) into names."""
    return tuple(v for v in text.replace(",", " ").split() if v)


def _floats(text: str) -> tuple[float, ...]:
    """Parse ``"a,b,c"`` (or space separated) into floats for argparse."""
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


#: (flag, field, type, metavar, help) of every value option; "%(default)s" is filled in.
_VALUE_FLAGS: tuple[tuple[str, str, object, str, str], ...] = (
    ("--n", "n_particles", int, "N",
     "number of particle images incl. junk and duplicates (default %(default)s)"),
    ("--box", "box_px", int, "PX", "box size in px, >= 16 (default %(default)s)"),
    ("--pixel-size", "pixel_size_A", float, "A", "pixel size in Å (default %(default)s)"),
    ("--diameter", "particle_diameter_A", float, "A",
     "particle diameter in Å (default: 0.55 x box x pixel size)"),
    ("--species", "n_species", int, "K",
     "number of species, the filament included (default %(default)s)"),
    ("--species-fractions", "species_fractions", _floats, "F1,F2,...",
     "relative abundance per species, e.g. 0.5,0.3,0.2 (default: equal)"),
    ("--phantoms", "phantoms", _names, "NAME,...",
     "design of each globular species, from " + ", ".join(PHANTOM_DESIGNS)
     + ", procedural_<i> or pdb:PATH, an atomic model at its own size (default: the "
     "library in order)"),
    ("--views-per-species", "views_per_species", int, "V",
     "discrete out-of-plane views per species; 0 = uniformly random 3D orientations "
     "(default %(default)s)"),
    ("--snr", "snr", float, "SNR",
     "signal variance / noise variance over the box, > 0 (default %(default)s)"),
    ("--junk", "junk_fraction", float, "FRACTION",
     "fraction of junk images, in [0, 1) (default %(default)s)"),
    ("--junk-types", "junk_types", _names, "KIND,...",
     "junk kinds, equally likely, from " + ", ".join(JUNK_TYPES)
     + " (default noise,ice_gradient,off_centre,aggregate)"),
    ("--off-centre-range", "off_centre_range", _floats, "MIN,MAX",
     "distance of off-centre junk from the box centre, fractions of the box "
     "(default %(default)s)"),
    ("--duplicates", "duplicate_fraction", float, "FRACTION",
     "fraction of real particles picked twice, in [0, 1) (default %(default)s)"),
    ("--shift-sigma", "shift_sigma_px", float, "PX",
     "sigma of the true shift per axis in px, clipped at 3 sigma (default %(default)s)"),
    ("--contrast-sd", "contrast_sd", float, "S",
     "spread of the per-particle contrast factor exp(S z - S^2), z normal (ice thickness); "
     "0 = every particle at the same contrast (default %(default)s)"),
    ("--defocus-range", "defocus_range_A", _floats, "MIN,MAX",
     "range of defocus U in Å (default 10000,25000)"),
    ("--astig-max", "astig_max_A", float, "A",
     "maximum defocus U - V in Å (default %(default)s)"),
    ("--voltage", "voltage_kv", float, "KV", "acceleration voltage in kV (default %(default)s)"),
    ("--cs", "cs_mm", float, "MM", "spherical aberration in mm (default %(default)s)"),
    ("--amplitude-contrast", "amplitude_contrast", float, "Q",
     "amplitude contrast fraction (default %(default)s)"),
    ("--noise-corner", "noise_corner_A", float, "A",
     "resolution in Å where the coloured noise excess halves (default %(default)s)"),
    ("--noise-floor", "noise_floor", float, "F",
     "white noise floor relative to the low-frequency excess (default %(default)s)"),
    ("--particles-per-micrograph", "particles_per_micrograph", int, "N",
     "picks per micrograph (default %(default)s)"),
    ("--micrograph-size", "micrograph_size_px", int, "PX",
     "micrograph width/height in px (default %(default)s)"),
    ("--seed", "seed", int, "SEED", "random seed (default %(default)s)"),
    ("--chunk", "chunk", int, "N",
     "particles generated in memory at a time; does not change the output "
     "(default %(default)s)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset`` and one flag per :class:`SimulationParams` field to ``parser``.

    Flags left out do not appear in the namespace (``argparse.SUPPRESS``), so that
    :func:`params_from_args` can tell a preset's value from an explicit flag. The caller
    adds the output directory.
    """
    fields = SimulationParams.__dataclass_fields__
    g = parser.add_argument_group("simulation")
    g.add_argument("--preset", choices=sorted(PRESETS), default=argparse.SUPPRESS,
                   help="start from a named parameter set; explicit flags override it "
                        "(hard: the accuracy benchmark, see docs/accuracy.md)")
    for flag, name, typ, metavar, text in _VALUE_FLAGS:
        default = fields[name].default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        g.add_argument(flag, dest=name, type=typ, metavar=metavar, default=argparse.SUPPRESS,
                       help=text.replace("%(default)s", str(shown)))
    g.add_argument("--filament", dest="include_filament", action="store_true",
                   default=argparse.SUPPRESS,
                   help="make the last species a helical filament (default off)")
    g.add_argument("--off-centre-edge", dest="off_centre_edge", action="store_true",
                   default=argparse.SUPPRESS,
                   help="off-centre distance in the max-norm: every off-centre particle "
                        "crosses a box edge (default: Euclidean distance)")
    g.add_argument("--no-ctf", dest="ctf", action="store_false", default=argparse.SUPPRESS,
                   help="no CTF: images without CTF, STAR gets Q=1, defocus 0, Cs 0")


def params_from_args(ns: argparse.Namespace) -> SimulationParams:
    """Build validated :class:`SimulationParams` from a namespace of :func:`add_arguments`.

    Values come from, in order of precedence: the flags given, the ``--preset``, the
    dataclass defaults.

    Raises
    ------
    InputError
        For any value out of range.
    """
    kwargs = dict(PRESETS[ns.preset]) if getattr(ns, "preset", None) else {}
    for f in dataclasses.fields(SimulationParams):
        if hasattr(ns, f.name):
            kwargs[f.name] = getattr(ns, f.name)
    return SimulationParams(**kwargs)


def params_from_dict(d: dict) -> SimulationParams:
    """Rebuild :class:`SimulationParams` from :meth:`SimulationParams.to_dict` output.

    Keys that are not fields (``diameter_A_resolved``) are ignored and missing ones
    (truth files of older versions) take their defaults, so old ``truth.h5`` files load.
    """
    names = {f.name for f in dataclasses.fields(SimulationParams)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    return SimulationParams(**kwargs)
