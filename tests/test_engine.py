"""The classifier on in-memory problems with known truth (3 species, CTF, noise)."""

from __future__ import annotations

import collections
import functools

import numpy as np
import pytest

from cryoclass.config import load_config
from cryoclass.em import ModelState, classify, sigma2_used
from cryoclass.errors import InputError
from cryoclass.geometry import make_geometry
from cryoclass.numerics.fourier import radius_grid, to_fourier, to_real
from cryoclass.numerics.postprocess import centre_of_mass, filament_angle
from cryoclass.numerics.transforms import rotate_images
from cryoclass.parallel.comm import Comm

from engine_fixtures import make_problem

BASE = ["classify.marginalize_poses=never",  # these tests are of force max and its search
        "classify.n_classes=4", "classify.max_res_A=12", "classify.online_em_iters=8",
        "classify.batch_size_per_class=60", "classify.anneal_start_iter=1",
        "classify.anneal_iters=4", "search.psi_step_deg=6", "mask.inner_diameter_A=160",
        "search.shift_range_A=51.2"]  # 20% of the box, as these mechanism tests were set


@functools.cache
def problem(**kw):
    return make_problem(**kw)


def run(extra=(), **kw):
    kw.setdefault("n_per", 100)
    kw.setdefault("snr", 0.3)
    table, truth = problem(**kw)
    cfg = load_config(None, BASE + list(extra))
    return classify(table, cfg, Comm(None)), truth, cfg


def lowpass(img, res_A, pixel_A):
    n = img.shape[-1]
    r = radius_grid(n)
    return to_real(to_fourier(img) * (r <= n * pixel_A / res_A), n)


def best_match(img, ref):
    """Max normalized cross-correlation over rotations (3 deg) and translations."""
    a = img - img.mean()
    best = -1.0
    angles = np.deg2rad(np.arange(0, 360, 3))
    rots = rotate_images(np.repeat(ref[None], angles.size, 0), angles)
    fa = np.conj(np.fft.fft2(a))
    for r in rots:
        r = r - r.mean()
        cc = np.fft.ifft2(np.fft.fft2(r) * fa).real
        best = max(best, cc.max() / (np.linalg.norm(a) * np.linalg.norm(r)))
    return best


def purity(result, truth):
    """Per non-trivial class: fraction of its particles from its dominant species."""
    out = {}
    cls = result.particles.class_index
    for j in np.unique(cls):
        sel = cls == j
        if sel.sum() < 5:
            continue
        c = collections.Counter(truth["species"][sel])
        sp, cnt = c.most_common(1)[0]
        out[int(j)] = (int(sp), cnt / sel.sum(), int(sel.sum()))
    return out


def circ_std_deg(d):
    r = abs(np.mean(np.exp(1j * d)))
    return np.degrees(np.sqrt(-2 * np.log(max(r, 1e-12))))


def test_separates_species_recovers_psi_and_projections():
    res, truth, cfg = run()
    pur = purity(res, truth)
    assert pur, "no populated class"
    for j, (sp, frac, n) in pur.items():
        assert frac >= 0.95, f"class {j} is only {frac:.0%} species {sp}"
    species_seen = {sp for sp, frac, n in pur.values()}
    assert species_seen == {0, 1, 2}
    p = res.particles
    for j in pur:
        sel = p.class_index == j
        d = p.psi_rad[sel] - truth["psi_rad"][sel]
        assert circ_std_deg(d) < 5.0, f"class {j}: psi scatter {circ_std_deg(d):.1f} deg"
    # class averages match the true projections (after the best rotation/translation)
    g = res.geom
    for j, (sp, frac, n) in pur.items():
        ref = truth["ref"][sp]
        # bring the truth to the working box by Fourier cropping
        from cryoclass.numerics.fourier import crop_fourier
        ref_w = to_real(crop_fourier(to_fourier(ref), ref.shape[-1], g.work_box), g.work_box)
        ref_w = lowpass(ref_w, 12.0, g.work_pixel_A)
        assert best_match(res.state.classes[j], ref_w) > 0.85
    # classes sorted by size
    assert np.all(np.diff(res.counts) <= 0)


def test_force_max_off_marginalizes_and_still_separates():
    on, truth, _ = run()
    off, truth, _ = run(["classify.force_max=false"])
    for j, (sp, frac, n) in purity(off, truth).items():
        assert frac >= 0.95
    # the marginal path really ran: different averages from the best-pose path
    assert not np.allclose(off.state.classes, on.state.classes, atol=1e-3)


def test_ctf_off_ignores_ctf_columns_on_ctf_free_data():
    table, truth = problem(n_per=100, snr=0.3, ctf=False)
    # put a plausible but wrong CTF into the metadata: --no-ctf must ignore it
    table.meta["defocus_u_A"] = 15000.0
    table.meta["defocus_v_A"] = 15000.0
    table.meta["amplitude_contrast"] = 0.07
    table.meta["cs_mm"] = 2.7
    cfg_off = load_config(None, BASE + ["ctf.correct=false"])
    res = classify(table, cfg_off, Comm(None))
    pur = purity(res, truth)
    assert {sp for sp, f, n in pur.values()} == {0, 1, 2}
    assert all(f >= 0.95 for sp, f, n in pur.values())
    cfg_on = load_config(None, BASE)
    wrong = classify(table, cfg_on, Comm(None))
    # applying the wrong CTF must visibly hurt the averages' match to the truth
    g = res.geom
    from cryoclass.numerics.fourier import crop_fourier

    def score(r):
        vals = []
        for j, (sp, f, n) in purity(r, truth).items():
            ref = truth["ref"][sp]
            ref_w = to_real(crop_fourier(to_fourier(ref), ref.shape[-1], g.work_box), g.work_box)
            vals.append(best_match(r.state.classes[j], lowpass(ref_w, 12.0, g.work_pixel_A)))
        return np.mean(vals)

    assert score(res) > score(wrong) + 0.05


def test_circular_mask_zeroes_outside():
    res, _, _ = run(["mask.inner_diameter_A=80", "mask.outer_diameter_A=100",
                     "recenter.enabled=false"])
    g = res.geom
    n = g.work_box
    c = np.arange(n) - n // 2
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    outside = r > g.mask_outer_px + 0.5
    cls = res.state.classes
    assert np.abs(cls[:, outside]).max() < 1e-3 * np.abs(cls).max()


def test_recentering_centres_an_off_centre_species():
    # the species sits 9.4 px off centre, beyond the 4 px shift search: alignment alone
    # cannot centre it, re-centering must
    extra = ["search.shift_range_A=16"]
    res, truth, _ = run(extra, offcentre=0)
    pur = purity(res, truth)
    cls0 = [j for j, (sp, f, n) in pur.items() if sp == 0]
    assert cls0
    com = centre_of_mass(res.state.classes[cls0], 0.2)
    assert np.hypot(com[:, 0], com[:, 1]).max() < 1.5
    off, truth, _ = run(extra + ["recenter.enabled=false"], offcentre=0)
    cls0 = [j for j, (sp, f, n) in purity(off, truth).items() if sp == 0]
    com = centre_of_mass(off.state.classes[cls0], 0.2)
    assert np.hypot(com[:, 0], com[:, 1]).min() > 3.0


def test_filament_classes_vertical():
    res, truth, _ = run(["constraints.align_filaments_vertically=true"])
    pur = purity(res, truth)
    j = [j for j, (sp, f, n) in pur.items() if sp == 1]  # the elongated species
    ang = np.degrees(np.asarray(filament_angle(res.state.classes[j], 0.2)))
    assert np.abs(ang).max() < 4.0
    # poses follow the rotated classes: psi offsets stay constant within a class
    p = res.particles
    for jj in j:
        sel = p.class_index == jj
        assert circ_std_deg(p.psi_rad[sel] - truth["psi_rad"][sel]) < 5.0


def test_non_negativity_and_clamp_solvent():
    plain, _, _ = run()
    assert plain.state.classes.min() < 0  # CTF-corrected averages ring below zero
    nn, _, _ = run(["constraints.non_negativity=true"])
    assert nn.state.classes.min() >= 0
    cs, _, _ = run(["constraints.clamp_solvent=true", "mask.inner_diameter_A=120"])
    assert cs.state.classes.min() >= 0
    corners = cs.state.classes[:, :3, :3]
    assert np.abs(corners).max() <= 1e-6 + 1e-3 * cs.state.classes.max()


def test_hard_classification_uses_only_best_class_in_final_iteration():
    extra = ["classify.online_em_iters=1", "classify.uncertainty_factor=6"]
    soft, _, _ = run(extra)
    hard, _, _ = run(extra + ["classify.hard_classification=true"])
    w_soft = soft.state.history[-1]["mstep_weights"]
    w_hard = hard.state.history[-1]["mstep_weights"]
    assert np.allclose(w_hard, hard.state.history[-1]["class_counts"])
    assert not np.allclose(w_soft, soft.state.history[-1]["class_counts"])


def test_alignment_band_limits():
    cfg = load_config(None, BASE + ["classify.max_align_res_A=20",
                                    "classify.min_align_res_A=60"])
    g = make_geometry(48, 4.0, cfg)
    r = np.hypot(g.ky, g.kx)
    ra = r[g.align]
    assert ra.max() <= g.work_box * g.work_pixel_A / 20 + 1e-9
    assert ra.min() >= g.work_box * g.work_pixel_A / 60 - 1e-9
    assert r.max() > ra.max()  # averaging still reaches max_res
    # classification at a low alignment resolution still averages to max_res
    res, truth, _ = run(["classify.max_align_res_A=20"])
    f = np.abs(to_fourier(res.state.classes[0]))
    rr = radius_grid(res.geom.work_box)
    band = rr > res.geom.work_box * res.geom.work_pixel_A / 18
    assert f[band].max() > 0


def test_uncertainty_factor_and_annealing_schedule():
    cfg = load_config(None, BASE + ["classify.uncertainty_factor=3",
                                    "classify.anneal_start_iter=2", "classify.anneal_iters=3"])
    g = make_geometry(48, 4.0, cfg)
    init = np.linspace(4.0, 1.0, g.n_shells)
    est = np.full(g.n_shells, 0.5)
    st = ModelState(0, np.zeros((4, g.work_box, g.work_box)), init, est)
    s = [sigma2_used(st, it, "online", cfg, g) for it in range(8)]
    assert np.allclose(s[0], 9 * init) and np.allclose(s[1], 9 * init)
    assert np.all(s[2] < s[1]) and np.all(s[3] < s[2]) and np.all(s[4] < s[3])
    assert np.allclose(s[5], est) and np.allclose(s[7], est)
    assert np.allclose(sigma2_used(st, 0, "full", cfg, g), est)
    white = load_config(None, BASE + ["classify.white_noise=true"])
    sw = sigma2_used(st, 7, "online", white, g)
    assert np.allclose(sw, sw[0])
    # a larger factor keeps the first iterations uncertain (higher ESS)
    lo, _, _ = run(["classify.uncertainty_factor=1"])
    hi, _, _ = run(["classify.uncertainty_factor=6"])
    assert hi.state.history[0]["ess_quartiles"][1] > lo.state.history[0]["ess_quartiles"][1]


def test_empty_classes_are_reseeded_during_online_em():
    # more classes than species: without re-seeding, classes that lose their particles
    # stay frozen and empty; with it, the spare classes split populated ones
    extra = ["classify.n_classes=8", "classify.online_em_iters=10"]
    on, truth, _ = run(extra)
    off, _, _ = run(extra + ["classify.reseed_empty=false"])
    assert sum(r["reseeded_classes"] for r in on.state.history) > 0
    assert sum(r["reseeded_classes"] for r in off.state.history) == 0
    assert (on.counts > 0).sum() > (off.counts > 0).sum()
    for j, (sp, frac, n) in purity(on, truth).items():
        assert frac >= 0.95


def test_more_classes_than_particles_is_refused():
    table, _ = problem(n_per=2, snr=0.3)
    cfg = load_config(None, ["classify.n_classes=10"])
    with pytest.raises(InputError, match="classes"):
        classify(table, cfg, Comm(None))


def test_three_final_full_iterations_by_default_each_over_every_particle():
    """The default ends with three passes over all particles (docs/accuracy.md 5.11);
    only the last one classifies hard."""
    res, _, cfg = run(["classify.online_em_iters=2", "classify.hard_classification=true"],
                      snr=0.03)  # low enough that the first full pass stays soft
    assert cfg.classify.final_full_iters == 3
    full = [h for h in res.state.history if h["kind"] == "full"]
    assert [h["sub"] for h in full] == [1, 2, 3]
    n = res.particles.class_index.size
    assert all(h["n_particles"] == n for h in full)
    assert np.allclose(full[-1]["mstep_weights"], full[-1]["class_counts"])  # hard
    assert not np.allclose(full[0]["mstep_weights"], full[0]["class_counts"])  # soft
