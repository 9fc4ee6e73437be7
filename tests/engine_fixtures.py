"""Small in-memory classification problems with known truth (no files, no simulator)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoclass.numerics.ctf import ctf_2d
from cryoclass.numerics.fourier import to_fourier, to_real
from cryoclass.numerics.transforms import rotate_images, shift_images


class ArraySource:
    """ImageSource stand-in serving rows of an in-memory stack."""

    def __init__(self, images):
        self.images = images
        self.box_px = images.shape[-1]

    def read(self, rows):
        return self.images[np.asarray(rows)]

    def close(self):
        pass


@dataclass
class ArrayTable:
    """ParticleTable stand-in."""

    meta: pd.DataFrame
    images: np.ndarray

    @property
    def box_px(self):
        return self.images.shape[-1]

    def __len__(self):
        return len(self.meta)

    def image_source(self, max_open=64):
        return ArraySource(self.images)


def shapes(n: int, pixel_A: float) -> np.ndarray:
    """Three asymmetric 2D 'species' made of Gaussian blobs (clean, psi 0, centred)."""
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    s = n / 64.0

    def blob(cx, cy, sx, sy, a=1.0):
        return a * np.exp(-((x - cx * s) ** 2 / (2 * (sx * s) ** 2)
                            + (y - cy * s) ** 2 / (2 * (sy * s) ** 2)))

    out = np.stack([
        blob(-6, 0, 5, 9) + blob(8, 6, 4, 4, 0.8) + blob(6, -9, 3, 3, 0.6),
        blob(0, 0, 12, 4) + blob(-10, 7, 4, 4, 0.9),
        blob(-7, -7, 4, 4) + blob(7, -7, 4, 4) + blob(0, 7, 5, 4, 1.1) + blob(9, 9, 2, 2, 0.7),
    ])
    return out


def make_problem(n_per=120, n=48, pixel_A=4.0, snr=0.5, junk=0, seed=0, ctf=True,
                 shift_sigma_px=1.5, offcentre=None):
    """Particles of the three shapes at random psi/shift with CTF and white noise."""
    rng = np.random.default_rng(seed)
    ref = shapes(n, pixel_A)
    if offcentre is not None:
        ref[offcentre] = shift_images(ref[offcentre][None], [(8.0, 5.0)])[0]
    k = ref.shape[0]
    species = np.repeat(np.arange(k), n_per)
    n_tot = species.size + junk
    psi = rng.uniform(0, 2 * np.pi, n_tot)
    shifts = np.clip(rng.normal(0, shift_sigma_px, (n_tot, 2)), -3 * shift_sigma_px,
                     3 * shift_sigma_px)
    clean = np.zeros((n_tot, n, n))
    clean[: species.size] = rotate_images(ref[species], psi[: species.size])
    clean = shift_images(clean, shifts)
    du = rng.uniform(8000, 20000, n_tot) if ctf else np.zeros(n_tot)
    dv = du - rng.uniform(0, 400, n_tot) if ctf else np.zeros(n_tot)
    ang = rng.uniform(0, np.pi, n_tot)
    q = 0.07 if ctf else 1.0
    cs = 2.7 if ctf else 0.0
    c = ctf_2d(n, pixel_A, du, dv, ang, np.full(n_tot, 300.0), np.full(n_tot, cs),
               np.full(n_tot, q), np.zeros(n_tot), np.zeros(n_tot), dtype=np.float64)
    signal = to_real(to_fourier(clean) * c, n)
    sig_var = signal[: species.size].var(axis=(1, 2)).mean()
    noise = rng.normal(0, np.sqrt(sig_var / snr), signal.shape)
    images = (signal + noise).astype(np.float32)
    labels = np.concatenate([species, -np.ones(junk, dtype=int)])
    meta = pd.DataFrame({
        "pixel_size_A": pixel_A, "defocus_u_A": du, "defocus_v_A": dv,
        "defocus_angle_rad": ang, "voltage_kv": 300.0, "cs_mm": cs,
        "amplitude_contrast": q, "phase_shift_rad": 0.0, "bfactor_A2": 0.0,
    })
    truth = {"species": labels, "psi_rad": psi, "shift_px": shifts, "ref": ref}
    return ArrayTable(meta, images), truth


# ------------------------------------------------------- the easy end-to-end set on disk
def classify_easy_set(base, duplicate_fraction: float):
    """Simulate the easy set (3 species x 2 views, SNR 0.1, 20% junk) into ``base/data`` and
    classify it under ``mpiexec -n 2`` into ``base/run``; returns the STAR of the data.

    The classify options were set on this easy set (discrete views) for full-resolution
    alignment with force max and a search of 20% of the box, kept as a regression test of
    that path; the
    default path is judged on the hard benchmark (docs/accuracy.md) and in
    test_schedule.py. With the defaults this set measured species-0 92.7% in its own
    classes and 44% of duplicate pairs resolved: its duplicates are picked 20-60 Å apart,
    beyond a search of diameter / 8.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cryoclass.simulate import SimulationParams, simulate_dataset

    star = simulate_dataset(base / "data", SimulationParams(
        n_particles=1500, box_px=64, pixel_size_A=3.0, n_species=3, views_per_species=2,
        snr=0.1, junk_fraction=0.2, duplicate_fraction=duplicate_fraction, seed=11))
    mpiexec = Path(sys.executable).parent / "mpiexec"
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=str(src))
    r = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "cryoclass", "classify",
                        str(star), "--out", str(base / "run"), "--classes", "12",
                        "--max-res", "9", "--online-iters", "12", "--batch-per-class", "60",
                        "--mask-diameter", "130", "--set", "classify.anneal_iters=8",
                        "--set", "classify.resolution_schedule=false",
                        "--marginalize", "never",
                        "--set", "search.shift_range_A=38.4",
                        "--no-plots"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return star
