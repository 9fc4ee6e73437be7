"""Pose search of one iteration: coarse-to-fine or exhaustive, and the matching backprojection.

:class:`PoseSearch` is built once per iteration from the class images, the noise model
and the run geometry (rotated references, shift phase tables, coarse subsets); then, per
chunk of particles, :meth:`PoseSearch.search` returns class posteriors and the best pose
in every class (plus local pose weights when marginalizing), :meth:`PoseSearch.backproject`
adds the chunk to the particle-frame bins of the M-step, and
:meth:`PoseSearch.model_at` the best poses' model images, from which
:meth:`PoseSearch.residual_power` gives the noise statistics and
:meth:`PoseSearch.fit_statistics` the per-particle fit. Pure array code (NumPy or
CuPy); the equations are in ``docs/algorithm.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryoclass.backend import array_namespace
from cryoclass.numerics import estep
from cryoclass.numerics.transforms import rotate_coefficients, shift_phases

#: Coarse candidates per class refined on the fine grid (coarse-to-fine search).
N_COARSE = 3
#: Class weights below this are not backprojected.
P_MIN = 1e-4
#: Marginal backprojection: a particle's largest local pose weights holding this fraction
#: of its mass are backprojected (RELION's adaptive fraction); the rest (<= 0.1%) are not.
SIGNIFICANT_MASS = 0.999


def gemm_flops(n_particles: int, n_shifts: int, n_coeffs: int, n_refs: int) -> float:
    """Floating-point operations of the cross and norm GEMMs of :func:`estep.pose_loglik`."""
    return 2.0 * n_particles * (n_shifts * 2 * n_coeffs + n_coeffs) * n_refs


def significant(w, fraction: float | None = None, floor: float = P_MIN):
    """Mask of the largest weights of each row that hold ``fraction`` of its mass.

    Parameters
    ----------
    w : real (P, n) non-negative weights (a particle's pose-and-class weights)

    Returns
    -------
    bool (P, n): the fewest weights, largest first, whose sum reaches ``fraction`` of the
    row's sum (ties at the smallest kept value are all kept), and above ``floor``.
    ``fraction`` defaults to :data:`SIGNIFICANT_MASS`.
    """
    xp = array_namespace(w)
    fraction = SIGNIFICANT_MASS if fraction is None else fraction
    srt = -xp.sort(-w, axis=1)
    cs = xp.cumsum(srt, axis=1)
    need = (cs - srt < fraction * cs[:, -1:]).sum(axis=1)  # weights before the mass is held
    thr = xp.take_along_axis(srt, xp.maximum(need - 1, 0)[:, None], axis=1)
    return (w >= thr) & (w > floor)


@dataclass
class ChunkPoses:
    """Search result for P particles and K classes (arrays on the compute device)."""

    class_post: object  # (P, K) class posteriors
    score: object  # (P, K) class evidence (best or log-marginal over poses)
    best_val: object  # (P, K) log-likelihood ratio (+ shift prior) at the best pose
    shift: object  # (P, K, 2) best shift per class, in lattice steps
    psi: object  # (P, K) best rotation index per class
    local: tuple | None = None  # coarse-to-fine, marginal: (weights, shifts, psis)
    exhaustive: object | None = None  # exhaustive, marginal: estep.Posteriors
    flops: float = 0.0
    pose_mass: object | None = None  # (P, K) best pose's mass on the first-stage grid


class PoseSearch:
    """Everything one iteration's pose search needs, computed once.

    The search runs on the level's coefficients (the Fourier-cropped box of its
    resolution) with the level's rotation and shift grids; the backprojection adds the
    particles at every averaging coefficient of the geometry (up to ``max_res_A``).

    Parameters
    ----------
    classes : real (K, m, m) class images on the device
    sigma2 : (n_shells,) noise variance used by this iteration
    geom : Geometry of the run (averaging coefficients)
    level : cryoclass.em.levels.Level (or any object with its fields)
    force_max : bool
    pad : int, padding factor of the reference rotation
    real_dtype : float32 or float64
    """

    def __init__(self, classes, sigma2, geom, level, force_max: bool, pad: int = 2,
                 real_dtype=np.float32):
        xp = array_namespace(classes)
        self.xp, self.geom, self.level, self.force_max = xp, geom, level, force_max
        self.rdt = real_dtype
        cdt = np.complex64 if real_dtype == np.float32 else np.complex128
        self.k = k = classes.shape[0]
        self.n_psi = n_psi = level.psi_rad.size
        sub = level.coeffs  # the level's coefficients (positions in 0..M-1)
        self.sub = xp.asarray(sub)
        refs = rotate_coefficients(classes, geom.ky[sub], geom.kx[sub], level.psi_rad, pad)
        self.align = xp.asarray(level.align)
        self.align_in_sub = xp.asarray(np.searchsorted(sub, level.align))
        self.refs3_a = xp.ascontiguousarray(refs[:, :, self.align_in_sub])
        self.refs = refs.reshape(k * n_psi, sub.size)  # (K n_psi, M_l)
        self.shell_sub = xp.asarray(geom.shell[sub])
        self.inv_s2 = xp.asarray((1.0 / sigma2[geom.shell]).astype(real_dtype))
        inv_s2w = xp.asarray(geom.herm.astype(real_dtype)) * self.inv_s2
        self.inv_s2w_a = inv_s2w[self.align]
        self.lp_class = xp.zeros(k)
        self.c2f = level.search_mode == "coarse_to_fine"
        step = level.shift_step_px
        if self.c2f:
            self.power3_a = self.refs3_a.real**2 + self.refs3_a.imag**2  # refine_local's norm
            self.coarse = xp.asarray(level.coarse)
            coarse_in_sub = xp.asarray(np.searchsorted(sub, level.coarse))
            self.refs_c = xp.ascontiguousarray(
                refs[:, ::2][:, :, coarse_in_sub]).reshape(-1, level.coarse.size)
            self.ab_c = xp.asarray(np.rint(level.shifts_coarse_px / step).astype(np.int64))
            self.phases_c = shift_phases(geom.ky[level.coarse], geom.kx[level.coarse],
                                         level.shifts_coarse_px, geom.work_box, xp, dtype=cdt)
            self.lp_c = xp.asarray(level.log_prior_shift_coarse.astype(real_dtype))
            self.inv_s2w_c = inv_s2w[self.coarse]
            self.n_t, self.n_r = level.shifts_coarse_px.shape[0], k * n_psi // 2
        else:
            self.ab_f = xp.asarray(np.rint(level.shifts_px / step).astype(np.int64))
            self.phases = shift_phases(geom.ky, geom.kx, level.shifts_px, geom.work_box, xp,
                                       dtype=cdt)
            self.phases_a = xp.ascontiguousarray(self.phases[:, self.align])
            self.lp_shift = xp.asarray(level.log_prior_shift.astype(real_dtype))
            self.n_t, self.n_r = level.shifts_px.shape[0], k * n_psi
        reach = int(np.ceil(np.abs(level.shifts_px).max() / step)) + 2
        self.tx, self.ty = estep.lattice_tables(geom.ky, geom.kx, geom.work_box, step, reach,
                                                xp, dtype=cdt)
        self.tx_a = xp.ascontiguousarray(self.tx[:, self.align])
        self.ty_a = xp.ascontiguousarray(self.ty[:, self.align])
        # the backprojection's coefficients (all averaging coefficients, or fewer during
        # online EM): tables restricted to them
        self.bp = xp.asarray(level.bp)
        self.full_bp = level.bp.size == geom.n_coeffs
        self.tx_b = self.tx if self.full_bp else xp.ascontiguousarray(self.tx[:, self.bp])
        self.ty_b = self.ty if self.full_bp else xp.ascontiguousarray(self.ty[:, self.bp])
        self.inv_s2_b = self.inv_s2 if self.full_bp else self.inv_s2[self.bp]
        d9 = np.array([[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        self.s_local = estep.lattice_phases(self.tx_b, self.ty_b, xp.asarray(d9))  # (9, M_b)
        self.s_local_re = xp.ascontiguousarray(self.s_local).view(real_dtype)  # (9, 2 M_b)

    def chunk_size(self, requested: int) -> int:
        """Particles per chunk that keep the largest temporaries bounded."""
        chunk = max(1, min(requested, 24_000_000 // max(1, self.n_t * self.n_r)))
        if self.c2f:  # the local refinement holds (P, K, N, 3, M_a) complex values
            chunk = max(1, min(chunk, 6_000_000 // max(
                1, 9 * N_COARSE * self.k * self.level.align.size)))
        return chunk

    def search(self, y, ctf, timer=None) -> ChunkPoses:
        """Class posteriors and best poses of a chunk.

        Parameters
        ----------
        y : complex (P, M) particle coefficients; ctf : real (P, M)
        timer : callable(name), optional, called after the coarse and fine stages
        """
        if self.c2f:
            return self._search_c2f(y, ctf, timer)
        k = self.k
        ll = estep.pose_loglik(y[:, self.align], ctf[:, self.align], self.inv_s2w_a,
                               self.refs3_a.reshape(k * self.n_psi, -1), self.phases_a)
        post = estep.posteriors(ll, k, self.lp_shift, self.lp_class, self.force_max)
        del ll
        if timer:
            timer("t_fine")
        return ChunkPoses(post.class_post, post.class_score, post.best_loglik,
                          self.ab_f[post.best_shift], post.best_psi,
                          exhaustive=None if self.force_max else post,
                          flops=gemm_flops(y.shape[0], self.n_t, self.level.align.size,
                                           self.n_r), pose_mass=post.pose_mass)

    def _search_c2f(self, y, ctf, timer) -> ChunkPoses:
        xp, k, p = self.xp, self.k, y.shape[0]
        ll_c = estep.pose_loglik(y[:, self.coarse], ctf[:, self.coarse], self.inv_s2w_c,
                                 self.refs_c, self.phases_c)
        t_top, psi_top, mass = estep.top_coarse_poses(ll_c, k, self.lp_c, N_COARSE)
        del ll_c
        flops = gemm_flops(p, self.n_t, self.level.coarse.size, self.n_r)
        if timer:
            timer("t_coarse")
        nb = t_top.shape[2]
        a = self.align
        z = xp.conj(y[:, a]) * (ctf[:, a] * self.inv_s2w_a[None])
        ctf2w = ctf[:, a] ** 2 * self.inv_s2w_a[None]
        cls_of = xp.broadcast_to(xp.arange(k)[None, :, None], t_top.shape).reshape(p, k * nb)
        ll, cand_t, cand_psi = estep.refine_local(
            z, ctf2w, self.refs3_a, self.tx_a, self.ty_a,
            self.ab_c[t_top].reshape(p, k * nb, 2), 2 * psi_top.reshape(p, k * nb),
            self.level.sigma_shift_px / self.level.shift_step_px, cls=cls_of,
            refs_power=self.power3_a)
        flat = ll.reshape(p, k, 27 * nb)  # local fine poses per class
        cand_t = cand_t.reshape(p, k, nb, 9, 2)
        cand_psi = cand_psi.reshape(p, k, nb, 3)
        arg = flat.argmax(axis=2)
        best_val = xp.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
        local = None
        if self.force_max:
            score = best_val
        else:  # overlapping neighbourhoods count once each: a small, documented bias
            score = estep.logsumexp(flat, axis=2)
            local = (xp.exp(flat - score[..., None]), cand_t, cand_psi)
        logits = score.astype(np.float64) + self.lp_class[None]
        cp = xp.exp(logits - logits.max(axis=1, keepdims=True))
        cp /= cp.sum(axis=1, keepdims=True)
        ar2, kk = xp.arange(p)[:, None], xp.arange(k)[None, :]
        shift = cand_t[ar2, kk, arg // 27, arg % 9]  # (P, K, 2)
        psi = cand_psi[ar2, kk, arg // 27, (arg % 27) // 9]  # (P, K)
        flops += p * k * nb * (8.0 * 27 + 12.0) * self.level.align.size
        if timer:
            timer("t_fine")
        return ChunkPoses(cp, score, best_val, shift, psi, local=local, flops=flops,
                          pose_mass=mass)

    def backproject(self, num_bins, den_bins, y, ctf, poses: ChunkPoses, weights, half):
        """Add a chunk to the particle-frame bins ``(half, class, psi)`` (in place).

        ``weights`` (P, K) are the class weights of the M-step (the posteriors, or one-hot
        for hard classification). Best pose per class, or the local/exhaustive pose
        marginal when the search was run without force max. The bins hold the level's
        backprojected coefficients ``level.bp``: (2 K n_psi, M_b).
        """
        xp, k, n_psi = self.xp, self.k, self.n_psi
        if not self.full_bp:
            y, ctf = y[:, self.bp], ctf[:, self.bp]
        g = (ctf * y) * self.inv_s2_b  # noise-weighted; the scale cancels in the Wiener filter
        ctf2 = (ctf * ctf) * self.inv_s2_b
        if poses.local is None and poses.exhaustive is None:
            ii, kc = xp.nonzero(weights > P_MIN)
            if ii.size:
                bins, ii, kc = estep.sort_pairs((half[ii] * k + kc) * n_psi
                                                + poses.psi[ii, kc], ii, kc)
                estep.accumulate_pairs(num_bins, den_bins, g, ctf2, ii, bins,
                                       estep.lattice_phases(self.tx_b, self.ty_b,
                                                            poses.shift[ii, kc]),
                                       weights[ii, kc])
        elif poses.local is not None:
            # the 9 local shifts of one (class, candidate, psi) fold into one row:
            # sum_e w_e conj(S_{ab+d_e}) = conj(S_ab) (W @ conj(S_d))
            wloc, cand_t, cand_psi = poses.local
            p, nb = y.shape[0], cand_t.shape[2]
            wl = (weights[:, :, None] * wloc).reshape(p, k, nb, 3, 9)
            wsum = wl.sum(axis=-1)  # (P, K, nb, 3)
            ii, kc, cb, dd = xp.nonzero(significant(wsum.reshape(p, -1)).reshape(wsum.shape))
            if ii.size:
                bins, ii, kc, cb, dd = estep.sort_pairs(
                    (half[ii] * k + kc) * n_psi + cand_psi[ii, kc, cb, dd], ii, kc, cb, dd)
                # S_ab (W @ S_d), the 9-shift fold as a real GEMM on [Re, Im] columns
                fold = (wl[ii, kc, cb, dd].astype(self.rdt) @ self.s_local_re).view(
                    self.s_local.dtype)
                phase_rows = estep.lattice_phases(self.tx_b, self.ty_b,
                                                  cand_t[ii, kc, cb, 4]) * fold
                estep.accumulate_pairs(num_bins, den_bins, g, ctf2, ii, bins, phase_rows,
                                       xp.ones(ii.size, dtype=self.rdt),
                                       wsum[ii, kc, cb, dd])
        else:
            phases = self.phases if self.full_bp else self.phases[:, self.bp]
            post = poses.exhaustive
            # the (particle, shift, class) cells holding SIGNIFICANT_MASS of each
            # particle's weight
            p = y.shape[0]
            cell_mass = post.pose_weights.sum(axis=3) * weights[:, None, :]  # (P, n_t, K)
            keep = significant(cell_mass.reshape(p, -1)).reshape(cell_mass.shape)
            estep.accumulate_marginal(num_bins, den_bins, g, ctf2, phases, post, half,
                                      weights, keep=keep)

    def model_at(self, ctf, cls, shift, psi):
        """Model ``CTF S_t R_psi A_k`` (P, M_l) at the given poses (lattice shifts).

        On the level's coefficients; :meth:`residual_power` and :meth:`fit_statistics`
        share it.
        """
        sub = self.sub
        return (ctf[:, sub] * estep.lattice_phases(self.tx[:, sub], self.ty[:, sub], shift)
                * self.refs[cls * self.n_psi + psi])

    def residual_power(self, y, model):
        """Per-shell ``sum |Y - model|^2`` (``model`` from :meth:`model_at`).

        Over the level's coefficients only: shells outside the level get zero (the
        driver keeps their previous noise estimate).
        """
        return estep.shell_power(y[:, self.sub] - model, self.shell_sub, self.geom.n_shells)

    def fit_statistics(self, y, model) -> dict:
        r"""Per-particle fit of the best pose, noise-whitened, over the alignment band.

        With :math:`X = Y`, ``model`` :math:`M = \mathrm{CTF}\, S_t\, R_\psi A_k` (from
        :meth:`model_at`) and weights :math:`w/\sigma^2` (Hermitian weight over the noise
        of the iteration): ``image_pow`` :math:`\sum w|X|^2/\sigma^2`, ``slice_pow``
        :math:`\sum w|M|^2/\sigma^2`, ``cross_cor``
        :math:`\sum w\,\mathrm{Re}(\overline{X} M)/\sigma^2`, ``resid_pow``
        :math:`\sum w|X - M|^2/\sigma^2` and ``alpha`` = cross_cor / slice_pow, the
        amplitude scale that would fit the particle best (reported, not applied). The
        log-likelihood ratio of the pose is ``cross_cor - slice_pow / 2``.

        Returns
        -------
        dict of (P,) float64 arrays
        """
        xp = self.xp
        model = model[:, self.align_in_sub]
        x = y[:, self.align]
        w = self.inv_s2w_a[None].astype(np.float64)

        def power(z):
            return (w * (z.real.astype(np.float64) ** 2 + z.imag.astype(np.float64) ** 2)
                    ).sum(axis=1)

        image, sl, resid = power(x), power(model), power(x - model)
        cross = (w * (xp.conj(x) * model).real.astype(np.float64)).sum(axis=1)
        alpha = cross / xp.maximum(sl, 1e-30)
        return {"image_pow": image, "slice_pow": sl, "cross_cor": cross, "resid_pow": resid,
                "alpha": alpha}

    def shell_counts(self):
        """Coefficients per shell that :meth:`residual_power` sums over: (n_shells,)."""
        return np.bincount(self.geom.shell[self.level.coeffs], minlength=self.geom.n_shells)
