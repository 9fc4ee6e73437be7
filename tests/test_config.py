import re
from pathlib import Path

import pytest

from cryoclass.config import (
    Config,
    ConfigError,
    load_config,
    parse_override,
    to_dict,
    to_toml,
)

ROOT = Path(__file__).resolve().parents[1]


def test_default_toml_matches_dataclasses_and_documents_every_key():
    cfg = load_config(ROOT / "configs" / "default.toml")
    assert cfg == Config()
    text = (ROOT / "configs" / "default.toml").read_text()
    for sec, values in to_dict(cfg).items():
        assert f"[{sec}]" in text
        for key in values:
            line = re.search(rf"^{key}\s*=.*$", text, re.M)
            assert line and "#" in line.group(0), f"{sec}.{key} lacks a comment"


def test_resolved_toml_round_trips():
    cfg = load_config(None, ["classify.n_classes=7", "mask.inner_diameter_A=120",
                             "compute.backend=numpy"])
    again = load_config(mapping=__import__("tomllib").loads(to_toml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("override, message", [
    ("classify.n_clases=3", "did you mean 'classify.n_classes'"),
    ("clasify.n_classes=3", "unknown config section"),
    ("classify.n_classes=three", "expected an integer"),
    ("classify.n_classes=0", "n_classes must be >= 1"),
    ("classify.max_res_A=-1", "max_res_A must be > 0"),
    ("classify.max_align_res_A=3", "finer than"),
    ("classify.force_max=maybe", "expected true/false"),
    ("recenter.threshold=1.5", "threshold"),
    ("compute.backend=tpu", "backend"),
    ("mask.inner_diameter_A=200", None),
])
def test_validation(override, message):
    if message is None:
        assert load_config(None, [override]).mask.inner_diameter_A == 200
        return
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_auto_values_and_overrides():
    cfg = load_config(None, ["classify.max_align_res_A=auto", "duplicates.remove=true"])
    assert cfg.classify.max_align_res_A is None
    assert cfg.duplicates.remove is True
    assert parse_override("search.psi_step_deg=5") == {"search": {"psi_step_deg": 5}}
    with pytest.raises(ConfigError):
        parse_override("n_classes=5")


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[classify\nn_classes = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
