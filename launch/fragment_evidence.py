"""How much evidence a single broken particle carries against the empty model.

    python launch/fragment_evidence.py [--res A] [--n N] [--snr S] [--seed SEED]

Draws N fragments by the hard preset's recipe (cryoclass simulate: the atoms that
``simulation.engine.broken_atoms`` keeps, re-centred on their own centre of mass, a
uniformly random view and psi, a random defocus and astigmatism in the preset's ranges)
and compares each with the whole particle P at the same rotation, the best class an ideal
classifier could offer it. With the noise whitening and CTF weighting of the
likelihood on |q| <= 1/res (the level the classes reach at SNR 0.05, about 15 Å), in units
of the noise, ``E = <P, P>_w`` and ``f_eff = max_t <S_t F, P>_w / E`` over shifts inside the
default search radius (D/8). The log-likelihood ratio of class P against the empty model
for the fragment's image is then Gaussian with mean ``(f_eff - 1/2) E`` and standard
deviation ``sqrt(E)`` (docs/algorithm.md, "Image model and likelihood"); the script prints
its distribution and the mean probability that it is positive, i.e. that even this ideal
pair of models puts the fragment with the good class. Any maximum over poses and classes
only raises that probability. docs/accuracy.md §5.9 has the numbers.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import norm

from cryoclass.simulation import render
from cryoclass.simulation.engine import Simulator, broken_atoms
from cryoclass.simulation.params import PRESETS, SimulationParams
from cryoclass.simulation.views import random_rotations, rot_z


def main() -> None:
    """Draw the fragments, print the distribution of their evidence."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=float, default=15.4, help="alignment resolution, Å")
    ap.add_argument("--n", type=int, default=400, help="fragments drawn")
    ap.add_argument("--snr", type=float, default=None, help="SNR (default: the preset's)")
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args()
    kw = dict(PRESETS["hard"])
    if a.snr is not None:
        kw["snr"] = a.snr
    p = SimulationParams(**kw)
    sim = Simulator(p, plan=False)
    ph = sim.phantoms[0]
    n, px = p.box_px, p.pixel_size_A
    rng = np.random.default_rng(a.seed)
    f = np.fft.fftfreq(n) / px
    q = np.hypot(f[:, None], np.fft.rfftfreq(n)[None, :] / px)
    band = (q <= 1.0 / a.res) & (q > 0)
    herm = np.ones_like(q)
    herm[:, 1:(n + 1) // 2] = 2.0  # half-plane weights (each kept column stands for two)
    noise_pow = render.noise_filter(n, px, p.noise_corner_A, p.noise_floor).astype(
        np.float64) ** 2
    d = (np.arange(n) + n // 2) % n - n // 2
    inside = np.hypot(d[None, :], d[:, None]) <= p.particle_diameter_A / 8 / px
    f_eff, keep_frac, power = [], [], []
    for _ in range(a.n):
        keep = broken_atoms(ph.coords_A, rng)
        rot = rot_z(np.deg2rad(rng.uniform(0.0, 360.0, 1))) @ random_rotations(rng, 1)
        zero = np.zeros((1, 2))
        whole = render.project(ph.coords_A, rot, zero, ph.sigma_A, ph.weight, n, px)[0]
        coords = ph.coords_A[keep] - ph.coords_A[keep].mean(axis=0)
        frag = render.project(coords, rot, zero, ph.sigma_A[keep], ph.weight[keep], n, px)[0]
        du = rng.uniform(*p.defocus_range_A)
        dv = du - rng.uniform(0.0, p.astig_max_A)
        ctf = render.particle_ctf(n, px, np.array([du]), np.array([dv]),
                                  np.array([rng.uniform(0.0, 180.0)]), p.voltage_kv, p.cs_mm,
                                  p.amplitude_contrast)[0].astype(np.float64)
        w = band * ctf**2 / noise_pow
        pf, ff = np.fft.rfft2(whole), np.fft.rfft2(frag)
        pp = (herm * w * np.abs(pf) ** 2).sum()
        cc = np.fft.irfft2(w * np.conj(pf) * ff, s=(n, n)) * n * n  # <S_t F, P>_w, every t
        f_eff.append(cc[inside].max() / pp)
        keep_frac.append(keep.mean())
        power.append(sim.scale**2 * pp / n**2)  # in units of the (whitened) noise
    f_eff, keep_frac, power = map(np.asarray, (f_eff, keep_frac, power))
    mean, std = (f_eff - 0.5) * power, np.sqrt(power)
    print(f"{a.n} fragments, SNR {p.snr}, {a.res} Å: f_eff median {np.median(f_eff):.3f} "
          f"(quartiles {np.percentile(f_eff, 25):.3f}, {np.percentile(f_eff, 75):.3f}), "
          f"f_eff > 1/2 for {np.mean(f_eff > 0.5):.3f}")
    for lo, hi in ((0.33, 0.4), (0.4, 0.5), (0.5, 0.6)):
        s = (keep_frac >= lo) & (keep_frac < hi)
        print(f"  kept {lo:.2f}-{hi:.2f} of the atoms: f_eff median {np.median(f_eff[s]):.3f}, "
              f"> 1/2 for {np.mean(f_eff[s] > 0.5):.3f}")
    print(f"E median {np.median(power):.1f} (a whole particle's log-likelihood ratio has mean "
          f"E/2 = {np.median(power) / 2:.1f}); a fragment's: mean median {np.median(mean):.1f}, "
          f"std median {np.median(std):.1f}; P(ratio > 0) = {norm.cdf(mean / std).mean():.3f}")


if __name__ == "__main__":
    main()
