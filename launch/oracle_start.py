"""EM started from the true projections of a hard-benchmark set's stored views.

    python launch/oracle_start.py DATA BASE_RUN

DATA holds particles.star and truth.h5 (``cryoclass simulate --preset hard``); BASE_RUN is
a finished default run on the same particles, whose initial noise and class-average power
set the start. K = the number of stored views (12); one rank; prints the hard-benchmark
metrics (`cryoclass evaluate`'s, without the class-average ones) of docs/accuracy.md §5.4:
do the classes stay pure, or go back to mixing views with their mirrors?
"""

from __future__ import annotations

import json
import sys

import h5py
import mrcfile
import numpy as np

from cryoclass import evaluate as ev
from cryoclass.config import load_config
from cryoclass.em import ModelState, classify
from cryoclass.em.schedule import initial_resolution
from cryoclass.geometry import make_geometry
from cryoclass.io.particles import load_particles
from cryoclass.numerics import postprocess
from cryoclass.parallel.comm import Comm


def main(data: str, base_run: str) -> None:
    """Run the classification from the true views and print its view metrics."""
    truth = h5py.File(f"{data}/truth.h5")
    proj = truth["clean_projections"][0].astype(np.float64)
    s2i = h5py.File(f"{base_run}/run.h5")["iterations"]["sigma2_init"][0]
    ref = mrcfile.read(f"{base_run}/class_averages.mrcs").astype(np.float64)
    table = load_particles(f"{data}/particles.star")
    diameter = float(truth.attrs["diameter_A_resolved"])
    cfg = load_config(None, [f"classify.n_classes={proj.shape[0]}",
                             f"preprocess.particle_diameter_A={diameter}"])
    geom = make_geometry(table.box_px, float(truth.attrs["pixel_size_A"]), cfg)
    proj = postprocess.apply_mask(proj, geom.mask_inner_px, geom.mask_outer_px)
    proj *= np.sqrt(np.mean(ref[: proj.shape[0]] ** 2) / np.mean(proj**2))
    state = ModelState(0, proj, s2i.copy(), s2i.copy(),
                       align_res_A=initial_resolution(geom, cfg))
    p = classify(table, cfg, Comm(None), state=state).particles
    _, truth_rows = ev.truth_names(f"{data}/truth.h5")  # one rank: rows in input order
    metrics = ev.hard_metrics(truth_rows, np.arange(p.class_index.size), p.class_index,
                              p.psi_rad, None, None, ev.NCC_LOWPASS_A)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
