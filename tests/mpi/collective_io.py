"""Load a particle set collectively and write it back as every rank count must.

Usage: mpiexec -n R python collective_io.py PARTICLES OUTDIR PIECE_BYTES [--no-mpi]
(PIECE_BYTES below 1 MiB: STAR pieces of that size, and rows converted and written in
chunks of 50 and 37.)

Each rank loads its slice, gives its particles a synthetic alignment that depends only on
the particle's row in the set, finds duplicates over all ranks, and the ranks write
particles.star/.cs (duplicates removed), rejected.star/.cs and all.star together. Rank 0
also saves the per-class median of a per-particle value (grouped_median) and the slice
bounds of every rank.
"""

import sys
from pathlib import Path

import numpy as np

import cryoclass.io.particles as particles
import cryoclass.io.star as star
from cryoclass.io.particles import (
    load_particles,
    write_particles_star,
    write_subset_cs,
    write_subset_star,
)
from cryoclass.outputs import find_duplicates_distributed
from cryoclass.parallel.comm import Comm
from cryoclass.parallel.stats import grouped_median

path, out, piece = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
star.PIECE_BYTES = piece
if piece < 1 << 20:  # small pieces: also convert and write in small chunks
    particles.CHUNK_ROWS = 50
    particles.WRITE_CHUNK_ROWS = 37
if "--no-mpi" in sys.argv:
    comm = Comm(None)
else:
    from mpi4py import MPI

    comm = Comm(MPI.COMM_WORLD)
table = load_particles(path, comm=comm)
rows = np.arange(table.row_offset, table.row_offset + len(table))
k = 5
align = {"class_index": rows % k, "psi_deg": (rows * 7.3) % 360 - 180,
         "shift_x_A": np.sin(rows) * 3, "shift_y_A": np.cos(rows * 1.7) * 3,
         "class_posterior": 0.5 + 0.5 * np.cos(rows) ** 2, "ess": 1 + (rows * 0.37) % 4,
         "best_class_prob": 0.5 + 0.5 * np.cos(rows) ** 2, "score": np.sin(rows * 0.91),
         "half_set": rows % 2}
meta = table.meta
dup = find_duplicates_distributed(
    comm, meta["micrograph"].to_numpy(dtype=object),
    meta["location_x_px"].to_numpy() + align["shift_x_A"] / table.pixel_size_A,
    meta["location_y_px"].to_numpy() + align["shift_y_A"] / table.pixel_size_A,
    align["score"], 40.0, table.row_offset)
write_subset_star(out / "particles.star", table, np.flatnonzero(~dup), align, comm)
write_subset_cs(out / "particles.cs", table, np.flatnonzero(~dup), align, comm)
write_subset_star(out / "rejected.star", table, np.flatnonzero(dup), align, comm)
write_subset_cs(out / "rejected.cs", table, np.flatnonzero(dup), align, comm)
write_particles_star(out / "all.star", table, align, comm)
med = grouped_median(align["ess"], align["class_index"], k + 1, comm)
bounds = comm.gather((table.row_offset, len(table), table.n_total, table.box_px))
if comm.rank == 0:
    np.savez(out / "stats.npz", median=med, bounds=np.array(bounds))
