"""Configuration: TOML -> frozen dataclasses, validated, with CLI overrides.

The defaults live in the dataclasses below and, documented line by line, in
``configs/default.toml`` (a test keeps the two identical). A run's resolved config
is written to its output directory (``config.toml``) and into ``run.h5``.

Examples
--------
>>> cfg = load_config(None, ["classify.n_classes=20"])
>>> cfg.classify.n_classes
20
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from cryoclass.errors import ConfigError

#: TOML strings that mean "not set" for optional values.
_NONE_WORDS = ("auto", "none", "")


@dataclass(frozen=True)
class ClassifyConfig:
    """Parameters of the classification itself (CryoSPARC's names and defaults)."""

    n_classes: int = 50
    max_res_A: float = 6.0
    max_align_res_A: float | None = None
    min_align_res_A: float | None = None
    uncertainty_factor: float | None = None  # auto: 2, or 1 when marginalizing every pose
    anneal_start_iter: int = 2
    anneal_iters: int = 15
    white_noise: bool = False
    online_em_iters: int = 20
    batch_size_per_class: int = 100
    final_full_iters: int = 3
    force_max: bool = True
    marginalize_poses: str = "auto"
    hard_classification: bool = False
    frc_regularization: bool = True
    regularization_T: float = 2.0
    sort_by_size: bool = True
    reseed_empty: bool = True
    resolution_schedule: bool = True
    initial_res_A: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class CtfConfig:
    """CTF handling."""

    correct: bool = True
    phase_flip_only: bool = False


@dataclass(frozen=True)
class MaskConfig:
    """Soft circular mask applied to the class averages each iteration."""

    enabled: bool = True
    inner_diameter_A: float | None = None
    outer_diameter_A: float | None = None


@dataclass(frozen=True)
class RecenterConfig:
    """Re-centering of class averages on their centre of mass."""

    enabled: bool = True
    threshold: float = 0.2
    binary: bool = False


@dataclass(frozen=True)
class ConstraintsConfig:
    """Optional constraints on class averages."""

    align_filaments_vertically: bool = False
    non_negativity: bool = False
    clamp_solvent: bool = False


@dataclass(frozen=True)
class DuplicatesConfig:
    """Duplicate-pick removal at the end of the run."""

    remove: bool | None = None
    min_separation_A: float = 20.0


@dataclass(frozen=True)
class PreprocessConfig:
    """Particle preprocessing."""

    particle_diameter_A: float | None = None


@dataclass(frozen=True)
class SearchConfig:
    """Pose search grid."""

    mode: str = "coarse_to_fine"
    psi_step_deg: float | None = None
    shift_range_A: float | None = None
    shift_step_A: float | None = None
    padding_factor: int = 2


@dataclass(frozen=True)
class ComputeConfig:
    """Where and how the arithmetic runs."""

    backend: str = "auto"
    precision: str = "single"
    chunk_size: int = 128
    devices: str = ""
    scratch_dir: str = ""
    particle_cache: str = "auto"


@dataclass(frozen=True)
class OutputConfig:
    """What is written besides the results."""

    plots: bool = True
    progress: bool = True
    checkpoint: bool = True
    micrograph_nx_px: int = 0  # micrograph shape for .cs location/* when the files are
    micrograph_ny_px: int = 0  # missing and the input does not say (0: unknown)


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration."""

    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    ctf: CtfConfig = field(default_factory=CtfConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    recenter: RecenterConfig = field(default_factory=RecenterConfig)
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)
    duplicates: DuplicatesConfig = field(default_factory=DuplicatesConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def _coerce(where: str, value: Any, typ: Any) -> Any:
    """Convert a TOML value to a field's type, or raise ConfigError."""
    optional = False
    args = getattr(typ, "__args__", None)
    if args and type(None) in args:
        optional = True
        typ = next(a for a in args if a is not type(None))
    if optional and (value is None or (isinstance(value, str)
                                       and value.strip().lower() in _NONE_WORDS)):
        return None
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off"):
            return value.lower() in ("true", "on")
        raise ConfigError(f"config {where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config {where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = " (or \"auto\")" if optional else ""
            raise ConfigError(f"config {where}: expected a number{hint}, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config {where}: must be finite, got {value!r}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config {where}: unsupported type {typ}")  # pragma: no cover


def _unknown(kind: str, name: str, choices: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(choices)})"
    return ConfigError(f"unknown config {kind} {name!r}{hint}")


def apply_mapping(cfg: Config, data: dict[str, Any], source: str = "config") -> Config:
    """Return ``cfg`` updated from a nested mapping ``{section: {key: value}}``."""
    sections = _section_types()
    updates = {}
    for sec, values in data.items():
        if sec not in sections:
            raise _unknown("section", sec, list(sections))
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{sec}] must be a table of key = value lines")
        cls = sections[sec]
        hints = get_type_hints(cls)
        current = getattr(cfg, sec)
        kw = {}
        for key, val in values.items():
            if key not in hints:
                raise _unknown("key", f"{sec}.{key}", [f"{sec}.{k}" for k in hints])
            kw[key] = _coerce(f"{sec}.{key}", val, hints[key])
        updates[sec] = replace(current, **kw)
    return replace(cfg, **updates)


def parse_override(text: str) -> dict[str, Any]:
    """Parse ``section.key=value`` (value in TOML syntax, bare words as strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    path, raw = text.split("=", 1)
    sec, key = path.strip().split(".", 1)
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return {sec: {key: value}}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (),
                mapping: dict[str, Any] | None = None) -> Config:
    """Defaults, then a TOML file, then a mapping, then ``section.key=value`` overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        cfg = apply_mapping(cfg, data, str(p))
    if mapping:
        cfg = apply_mapping(cfg, mapping)
    for text in overrides:
        cfg = apply_mapping(cfg, parse_override(text), "--set")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Raise ConfigError for values out of range or inconsistent with each other."""
    c = cfg.classify

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(c.n_classes >= 1, f"classify.n_classes must be >= 1, got {c.n_classes}")
    need(c.max_res_A > 0, f"classify.max_res_A must be > 0 Å, got {c.max_res_A}")
    if c.max_align_res_A is not None:
        need(c.max_align_res_A >= c.max_res_A,
             f"classify.max_align_res_A ({c.max_align_res_A} Å) is finer than "
             f"classify.max_res_A ({c.max_res_A} Å): it must be the same or a lower resolution")
    if c.min_align_res_A is not None:
        hi = c.max_align_res_A or c.max_res_A
        need(c.min_align_res_A > hi,
             f"classify.min_align_res_A ({c.min_align_res_A} Å) must be a lower resolution "
             f"(larger Å) than the maximum alignment resolution ({hi} Å)")
    need(c.uncertainty_factor is None or c.uncertainty_factor >= 1.0,
         f"classify.uncertainty_factor must be >= 1, got {c.uncertainty_factor}")
    need(c.anneal_start_iter >= 0, "classify.anneal_start_iter must be >= 0")
    need(c.anneal_iters >= 0, "classify.anneal_iters must be >= 0")
    need(c.online_em_iters >= 0, "classify.online_em_iters must be >= 0")
    need(c.batch_size_per_class >= 1, "classify.batch_size_per_class must be >= 1")
    need(c.final_full_iters >= 1,
         "classify.final_full_iters must be >= 1 (it produces the outputs)")
    need(c.regularization_T > 0, "classify.regularization_T must be > 0")
    if c.initial_res_A is not None:
        need(c.initial_res_A > 0, "classify.initial_res_A must be > 0 Å")
    need(c.seed >= 0, "classify.seed must be >= 0")
    need(c.marginalize_poses in ("auto", "always", "never"),
         f"classify.marginalize_poses must be auto, always or never, got "
         f"{c.marginalize_poses!r}")
    r = cfg.recenter
    need(0.0 <= r.threshold < 1.0, f"recenter.threshold must be in [0, 1), got {r.threshold}")
    m = cfg.mask
    for name in ("inner_diameter_A", "outer_diameter_A"):
        v = getattr(m, name)
        need(v is None or v > 0, f"mask.{name} must be > 0 Å")
    if m.inner_diameter_A is not None and m.outer_diameter_A is not None:
        need(m.outer_diameter_A >= m.inner_diameter_A,
             "mask.outer_diameter_A must be >= mask.inner_diameter_A")
    need(cfg.duplicates.min_separation_A > 0, "duplicates.min_separation_A must be > 0 Å")
    s = cfg.search
    for name in ("psi_step_deg", "shift_range_A", "shift_step_A"):
        v = getattr(s, name)
        need(v is None or v >= 0 if name == "shift_range_A" else v is None or v > 0,
             f"search.{name} must be positive")
    need(s.padding_factor in (1, 2, 3, 4), "search.padding_factor must be 1, 2, 3 or 4")
    need(s.mode in ("coarse_to_fine", "exhaustive"),
         f"search.mode must be coarse_to_fine or exhaustive, got {s.mode!r}")
    need(cfg.compute.backend in ("auto", "numpy", "cupy"),
         f"compute.backend must be auto, numpy or cupy, got {cfg.compute.backend!r}")
    need(cfg.compute.chunk_size >= 1, "compute.chunk_size must be >= 1")
    need(all(d.strip().isdigit() for d in cfg.compute.devices.split(",") if d.strip()),
         f"compute.devices must be comma-separated GPU ids, got {cfg.compute.devices!r}")
    need(cfg.compute.particle_cache in ("auto", "device", "host"),
         f"compute.particle_cache must be auto, device or host, got "
         f"{cfg.compute.particle_cache!r}")
    need(cfg.compute.precision in ("single", "double"),
         f"compute.precision must be single or double, got {cfg.compute.precision!r}")
    pd = cfg.preprocess.particle_diameter_A
    need(pd is None or pd > 0, "preprocess.particle_diameter_A must be > 0 Å")
    o = cfg.output
    need(o.micrograph_nx_px >= 0 and o.micrograph_ny_px >= 0
         and (o.micrograph_nx_px > 0) == (o.micrograph_ny_px > 0),
         "output.micrograph_nx_px and output.micrograph_ny_px: give both (pixels) or "
         "neither")


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict of the config (None kept as None)."""
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """Render the resolved config as TOML (None written as "auto")."""
    lines = []
    for sec, values in to_dict(cfg).items():
        lines.append(f"[{sec}]")
        for key, val in values.items():
            if val is None:
                text = '"auto"'
            elif isinstance(val, bool):
                text = "true" if val else "false"
            elif isinstance(val, str):
                text = '"' + val.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(val)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


def config_hash(cfg: Config, keys: tuple[str, ...] | None = None) -> str:
    """Stable hash of the config (or of selected ``section.key`` entries)."""
    import hashlib

    d = to_dict(cfg)
    if keys is not None:
        d = {k: d[k.split(".")[0]][k.split(".")[1]] for k in keys}
    return hashlib.sha256(repr(sorted(d.items())).encode()).hexdigest()[:16]
