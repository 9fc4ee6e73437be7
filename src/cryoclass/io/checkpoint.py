"""Checkpoints: the model state after an iteration, written atomically by rank 0.

A checkpoint holds everything the next iteration depends on (class images, running
statistics, noise model, iteration counter) plus the history, so a run killed at any
point and resumed from its last checkpoint ends with the same result as an uninterrupted
run. Batch choices derive from (seed, iteration), so no RNG state is needed. The state
is global (not per rank): a run may be resumed with a different number of ranks.

Layout of ``checkpoint.h5``: datasets ``classes``, ``sigma2_init``, ``sigma2_est``,
``num`` (complex128), ``den``, ``frc``; group ``history/NNNN`` with one dataset or
attribute per record key; attributes ``iteration``, ``align_res_A`` (the resolution
schedule's level for the next iteration), ``pose_marginal`` (1 when the run
marginalizes over every pose, decided once; -1 in older checkpoints), ``config_hash``,
``config_toml``, ``input``, ``version``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np

from cryoclass import __version__
from cryoclass.errors import InputError
from cryoclass.io.paths import h5_output

logger = logging.getLogger(__name__)

#: Config sections that do not change results (a resume may change them freely).
FREE_SECTIONS = ("output", "compute")


def result_hash(cfg) -> str:
    """Hash of every config value that can change the result."""
    from cryoclass.config import config_hash, to_dict

    keys = tuple(f"{sec}.{key}" for sec, vals in to_dict(cfg).items()
                 if sec not in FREE_SECTIONS for key in vals)
    return config_hash(cfg, keys)


def save_checkpoint(path: Path, state, cfg, input_path: str) -> None:
    """Write the state after ``state.iteration`` iterations (atomic replace)."""
    from cryoclass.config import to_toml

    with h5_output(path) as f:
        f.attrs["iteration"] = state.iteration
        f.attrs["config_hash"] = result_hash(cfg)
        f.attrs["config_toml"] = to_toml(cfg)
        f.attrs["input"] = str(input_path)
        f.attrs["version"] = __version__
        f.attrs["align_res_A"] = state.align_res_A
        f.attrs["pose_marginal"] = state.pose_marginal
        f["classes"] = state.classes
        f["sigma2_init"] = state.sigma2_init
        f["sigma2_est"] = state.sigma2_est
        for name in ("num", "den", "frc"):
            val = getattr(state, name)
            if val is not None:
                f[name] = val
        hist = f.create_group("history")
        for i, rec in enumerate(state.history):
            g = hist.create_group(f"{i:04d}")
            for key, val in rec.items():
                if isinstance(val, str | int | float | np.integer | np.floating):
                    g.attrs[key] = val
                else:
                    g[key] = np.asarray(val)


def load_checkpoint(path: Path, cfg=None):
    """Read a checkpoint; refuse it when ``cfg`` changes anything result-relevant.

    Returns
    -------
    state : ModelState, attrs : dict
    """
    from cryoclass.em import ModelState

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint to resume from: {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if cfg is not None and attrs["config_hash"] != result_hash(cfg):
                raise InputError(
                    f"{path}: the configuration differs from the run being resumed in a "
                    "value that changes the result; resume with the run's config.toml or "
                    "start a new run directory")
            history = []
            for name in sorted(f["history"]):
                g = f["history"][name]
                rec = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
                rec.update({k: g[k][()] for k in g})
                history.append(rec)
            state = ModelState(
                iteration=int(attrs["iteration"]), classes=f["classes"][()],
                sigma2_init=f["sigma2_init"][()], sigma2_est=f["sigma2_est"][()],
                num=f["num"][()] if "num" in f else None,
                den=f["den"][()] if "den" in f else None,
                frc=f["frc"][()] if "frc" in f else None, history=history,
                align_res_A=float(attrs.get("align_res_A", np.nan)),
                pose_marginal=int(attrs.get("pose_marginal", -1)))
    except OSError as exc:
        raise InputError(f"{path}: unreadable checkpoint ({exc})") from None
    return state, attrs
