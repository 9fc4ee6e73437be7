"""Checkpoint after each iteration; a stopped or killed run resumes to the same result."""

import numpy as np
import pytest

from cryoclass.config import load_config
from cryoclass.em import StopRequested, classify
from cryoclass.errors import InputError
from cryoclass.io.checkpoint import load_checkpoint, save_checkpoint
from cryoclass.parallel.comm import Comm

from engine_fixtures import make_problem

OPTS = ["classify.marginalize_poses=never", "classify.n_classes=4", "classify.max_res_A=12", "classify.online_em_iters=5",
        "classify.batch_size_per_class=40", "classify.anneal_start_iter=1",
        "classify.anneal_iters=2", "search.psi_step_deg=8", "mask.inner_diameter_A=160"]


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    table, _ = make_problem(n_per=50, snr=0.3)
    cfg = load_config(None, OPTS)
    full = classify(table, cfg, Comm(None))
    ckpt = tmp_path / "checkpoint.h5"

    def save(state, geom, record, is_last):
        if not is_last:
            save_checkpoint(ckpt, state, cfg, "in-memory")

    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] >= 3

    with pytest.raises(StopRequested) as info:
        classify(table, cfg, Comm(None), on_iteration=save, should_stop=stop_after_three)
    assert info.value.iteration == 3
    state, attrs = load_checkpoint(ckpt, cfg)
    assert state.iteration == 3 and len(state.history) == 3
    resumed = classify(table, cfg, Comm(None), state=state)
    np.testing.assert_array_equal(resumed.state.classes, full.state.classes)
    np.testing.assert_array_equal(resumed.particles.class_index, full.particles.class_index)
    np.testing.assert_array_equal(resumed.particles.psi_rad, full.particles.psi_rad)
    assert len(resumed.state.history) == len(full.state.history)


def test_resume_refuses_a_changed_config(tmp_path):
    table, _ = make_problem(n_per=20, snr=0.3)
    cfg = load_config(None, OPTS + ["classify.online_em_iters=1"])
    ckpt = tmp_path / "checkpoint.h5"
    classify(table, cfg, Comm(None),
             on_iteration=lambda s, g, r, last: save_checkpoint(ckpt, s, cfg, "x"))
    changed = load_config(None, OPTS + ["classify.online_em_iters=1",
                                        "classify.uncertainty_factor=4"])
    with pytest.raises(InputError, match="configuration differs"):
        load_checkpoint(ckpt, changed)
    # output/compute settings do not matter
    same = load_config(None, OPTS + ["classify.online_em_iters=1", "output.plots=false"])
    load_checkpoint(ckpt, same)
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.h5")


def test_scratch_shard_gives_the_same_result(tmp_path, caplog):
    table, _ = make_problem(n_per=30, snr=0.3)
    cfg = load_config(None, OPTS + ["classify.online_em_iters=2"])
    ram = classify(table, cfg, Comm(None))
    disk_cfg = load_config(None, OPTS + ["classify.online_em_iters=2",
                                         f"compute.scratch_dir={str(tmp_path)!r}"])
    with caplog.at_level("INFO", logger="cryoclass.store"):
        disk = classify(table, disk_cfg, Comm(None))
    assert "cryoclass-rank0000-" in caplog.text  # the shard lived on disk
    assert not list(tmp_path.iterdir())  # and the file is gone after the run
    np.testing.assert_array_equal(disk.state.classes, ram.state.classes)
