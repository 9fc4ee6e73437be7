r"""Chunked image generation from a :class:`~cryoclass.simulation.plan.Plan`.

For row ``i`` with species projection (real particle or off-centre junk)::

    clean_i = c * IFFT[ CTF_i * FFT[ proj(Rz(psi_i) R_v,i X, t_i) ] ]
    image_i = clean_i + noise_i

``proj`` renders the rotated, shifted atoms exactly (no interpolation), ``c`` is one
global signal scale chosen so that the mean signal variance of real particles is ``snr``
times the noise variance (which is 1), and ``noise_i`` is coloured Gaussian noise of unit
pixel variance. Noise comes in fixed blocks of :data:`NOISE_BLOCK` rows, each from its
own seed stream, so it does not depend on the chunk size.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

from cryoclass.simulation import render
from cryoclass.simulation.params import DEFAULT_JUNK_TYPES, JUNK_TYPES, SimulationParams
from cryoclass.simulation.phantoms import (
    Phantom,
    globular_phantom,
    make_phantoms,
    pixel_limited,
)
from cryoclass.simulation.plan import (
    STREAM_CALIBRATION,
    STREAM_JUNK,
    STREAM_NOISE,
    Plan,
    draw_poses,
    make_plan,
    rng_for,
    species_views,
)
from cryoclass.simulation.views import (
    random_filament_rotations,
    random_rotations,
    representative_views,
    rot_z,
)

logger = logging.getLogger(__name__)

#: Rows per noise block (each block has its own random stream).
NOISE_BLOCK = 64
#: Rows formed together inside :meth:`Simulator.generate` (bounds the temporaries).
SUB_BATCH = 256
#: Real particles rendered to calibrate the signal scale.
N_CALIBRATION = 384
#: Representative views stored for continuous orientations.
N_REPRESENTATIVE_VIEWS = 12

_OFF = JUNK_TYPES.index("off_centre")
_ICE = JUNK_TYPES.index("ice_gradient")
_AGG = JUNK_TYPES.index("aggregate")
_BROKEN = JUNK_TYPES.index("broken")
_OTHER = JUNK_TYPES.index("other_particle")
#: Procedural design index of the ``other_particle`` junk (the next free one is used when
#: a species already has this design).
OTHER_DESIGN_INDEX = 1000
#: Fraction of a phantom's atoms kept in a broken particle (uniform in this range).
BROKEN_KEEP_RANGE = (0.33, 0.6)


def broken_atoms(coords_A: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Atoms a broken particle keeps (bool mask).

    Those on one side of a plane of random normal that holds a fraction in
    :data:`BROKEN_KEEP_RANGE` of them.
    """
    u = rng.standard_normal(3)
    side = coords_A @ (u / np.linalg.norm(u))
    return side <= np.quantile(side, rng.uniform(*BROKEN_KEEP_RANGE))


@functools.lru_cache(maxsize=8)
def other_phantom(diameter_A: float, pixel_size_A: float,
                  species_names: tuple[str, ...]) -> Phantom:
    """Return the particle of ``other_particle`` junk: a procedural design no species has.

    Same largest extent as the species, atom widths at least one pixel (as
    :func:`~cryoclass.simulation.phantoms.make_phantoms` makes them).
    """
    index = OTHER_DESIGN_INDEX
    while f"procedural_{index}" in species_names:
        index += 1
    return pixel_limited(globular_phantom(index, diameter_A), pixel_size_A)


@functools.lru_cache(maxsize=8)
def _phantoms(n_species: int, diameter_A: float, box_A: float, pixel_size_A: float,
              filament: bool, designs: tuple[str, ...] | None) -> tuple[Phantom, ...]:
    return tuple(make_phantoms(n_species, diameter_A, box_A, pixel_size_A, filament, designs))


def _image_key(params: SimulationParams) -> SimulationParams:
    """``params`` with the fields that do not affect views or image formation reset.

    Used as a cache key, so repeated simulations (tests, different N) share the view
    selection and the signal-scale calibration.
    """
    return dataclasses.replace(params, n_particles=1, chunk=1, junk_fraction=0.0,
                               junk_types=DEFAULT_JUNK_TYPES, duplicate_fraction=0.0,
                               particles_per_micrograph=1, snr=1.0, contrast_sd=0.0)


_VIEW_CACHE: dict[SimulationParams, list[np.ndarray]] = {}


def _cached_views(sim: Simulator, key: SimulationParams) -> list[np.ndarray]:
    """Discrete views of each species (read-only arrays), cached by :func:`_image_key`."""
    if key not in _VIEW_CACHE:
        if len(_VIEW_CACHE) >= 8:
            _VIEW_CACHE.pop(next(iter(_VIEW_CACHE)))
        views = species_views(sim.params, sim.is_filament, sim._render_views)
        for v in views:
            v.setflags(write=False)
        _VIEW_CACHE[key] = views
    return _VIEW_CACHE[key]


@functools.lru_cache(maxsize=8)
def _mean_signal_variance(params: SimulationParams) -> float:
    """Mean box variance ``m`` of unscaled, CTF-modulated real particles.

    Estimated from :data:`N_CALIBRATION` real particles drawn from their own stream,
    so it depends on the parameters and the seed, not on N or the chunk size; the
    signal scale is ``c = sqrt(snr / m)``.
    """
    sim = Simulator(params, plan=False)
    rng = rng_for(params.seed, STREAM_CALIBRATION)
    poses = draw_poses(rng, N_CALIBRATION, params, sim.views, sim.is_filament)
    signal = sim.render_species(poses.species, poses.rotation, poses.psi_deg, poses.shift_px)
    signal = sim.ctf_modulate(signal, poses.defocus_u_A, poses.defocus_v_A,
                              poses.defocus_angle_deg)
    mean_var = float(np.mean(np.var(signal, axis=(1, 2), dtype=np.float64)))
    logger.debug("mean unscaled signal variance %.4g", mean_var)
    return mean_var


class Simulator:
    """Phantoms, views, plan and image formation of one data set.

    Parameters
    ----------
    params : SimulationParams
        The data set definition.
    plan : bool
        Draw the per-row plan (set False for calibration-only use).
    scale : float, optional
        The global signal scale, when known (e.g. from a truth file); default: calibrated
        from the parameters on first use.
    """

    def __init__(self, params: SimulationParams, plan: bool = True,
                 scale: float | None = None) -> None:
        self.params = params
        self.n = params.box_px
        self.phantoms = _phantoms(params.n_species, params.diameter_A,
                                  params.box_px * params.pixel_size_A, params.pixel_size_A,
                                  params.include_filament, params.phantoms)
        self.is_filament = [p.is_filament for p in self.phantoms]
        self.views = _cached_views(self, _image_key(params))
        self.noise_filter = render.noise_filter(self.n, params.pixel_size_A,
                                                params.noise_corner_A, params.noise_floor)
        self.plan: Plan | None = make_plan(params, self.views, self.is_filament) if plan else None
        self._scale: float | None = None if scale is None else float(scale)
        self._noise_cache: tuple[int, np.ndarray] | None = None

    # -- pieces -------------------------------------------------------------------
    def _render_views(self, k: int, rotations: np.ndarray) -> np.ndarray:
        """Unscaled projections (m, n, n) of species ``k`` at view rotations, psi 0, t 0."""
        m = rotations.shape[0]
        return self.render_species(np.full(m, k), rotations, np.zeros(m), np.zeros((m, 2)))

    @property
    def scale(self) -> float:
        """Global signal scale (noise pixel variance is 1)."""
        if self._scale is None:
            m = _mean_signal_variance(_image_key(self.params))
            self._scale = float(np.sqrt(self.params.snr / m))
        return self._scale

    def render_species(self, species, rotation, psi_deg, shift_px) -> np.ndarray:
        """Unscaled, CTF-free projections (m, n, n) of species under poses."""
        species = np.asarray(species)
        out = np.empty((species.shape[0], self.n, self.n), dtype=np.float32)
        full = rot_z(np.deg2rad(psi_deg)) @ rotation
        for k in np.unique(species):
            sel = np.nonzero(species == k)[0]
            ph = self.phantoms[int(k)]
            out[sel] = render.project(ph.coords_A, full[sel], np.asarray(shift_px)[sel],
                                      ph.sigma_A, ph.weight, self.n, self.params.pixel_size_A)
        return out

    def ctf_modulate(self, images, defocus_u_A, defocus_v_A, defocus_angle_deg) -> np.ndarray:
        """Apply each row's CTF (no-op when the CTF is off)."""
        p = self.params
        if not p.ctf or images.shape[0] == 0:
            return images
        ctf = render.particle_ctf(self.n, p.pixel_size_A, defocus_u_A, defocus_v_A,
                                  defocus_angle_deg, p.voltage_kv, p.cs_mm,
                                  p.amplitude_contrast)
        return render.apply_ctf(images, ctf)

    def clean_projections(self) -> tuple[np.ndarray, np.ndarray]:
        """Scaled, CTF-free projections at psi 0, t 0 of each species' views.

        Returns
        -------
        projections : ndarray (n_species, n_views, n, n) float32
        rotations : ndarray (n_species, n_views, 3, 3)
            The discrete views, or :data:`N_REPRESENTATIVE_VIEWS` representative
            views when orientations are continuous.
        """
        rots = []
        for k, fil in enumerate(self.is_filament):
            if self.params.views_per_species > 0:
                rots.append(self.views[k])
            else:
                rots.append(representative_views(N_REPRESENTATIVE_VIEWS, fil))
        rots_a = np.stack(rots)
        n_sp, n_v = rots_a.shape[:2]
        species = np.repeat(np.arange(n_sp), n_v)
        proj = self.render_species(species, rots_a.reshape(-1, 3, 3), np.zeros(n_sp * n_v),
                                   np.zeros((n_sp * n_v, 2)))
        return (proj * np.float32(self.scale)).reshape(n_sp, n_v, self.n, self.n), rots_a

    def clean_projection(self, species, rotation, psi_deg=None) -> np.ndarray:
        """Scaled, CTF-free projections (m, n, n) at any view rotations, t = 0.

        The same units as the signal in the images before the CTF (and as
        ``truth.h5:/clean_projections``): ``c · P`` of species ``species[i]`` under the full
        rotation ``Rz(psi_deg[i]) @ rotation[i]`` (psi 0 when not given).
        """
        rotation = np.asarray(rotation, dtype=np.float64).reshape(-1, 3, 3)
        m = rotation.shape[0]
        species = np.broadcast_to(np.asarray(species, dtype=np.int64), (m,))
        psi = np.zeros(m) if psi_deg is None else np.broadcast_to(
            np.asarray(psi_deg, dtype=np.float64), (m,))
        return self.render_species(species, rotation, psi, np.zeros((m, 2))) * np.float32(
            self.scale)

    def _broken_signal(self, rng: np.random.Generator) -> np.ndarray:
        """Unscaled, CTF-free fragment (n, n): the atoms on one side of a random plane.

        A random species loses the atoms beyond a plane of random normal that keeps a
        fraction in :data:`BROKEN_KEEP_RANGE`; the fragment is re-centred on its own centre
        of mass (as a picker would centre it), then viewed at a random SO(3) rotation
        (flat-lying for a filament), a random psi and a shift of the real particles' spread.
        """
        p = self.params
        ph = self.phantoms[int(rng.integers(0, p.n_species))]
        keep = broken_atoms(ph.coords_A, rng)
        coords = ph.coords_A[keep] - ph.coords_A[keep].mean(axis=0)
        rot = (random_filament_rotations if ph.is_filament else random_rotations)(rng, 1)
        full = rot_z(np.deg2rad(rng.uniform(0.0, 360.0, 1))) @ rot
        return self._project_shifted(coords, ph.sigma_A[keep], ph.weight[keep], full, rng)

    def _project_shifted(self, coords_A: np.ndarray, sigma_A: np.ndarray, weight: np.ndarray,
                         full: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Project atoms (n, n) at rotation ``full`` (1, 3, 3) and a shift drawn from ``rng``.

        The shift has the real particles' spread (``shift_sigma_px`` per axis, clipped at
        three sigma), as a picker leaves it.
        """
        sig = self.params.shift_sigma_px
        shift = np.clip(rng.standard_normal((1, 2)) * sig, -3 * sig, 3 * sig)
        return render.project(coords_A, full, shift, sigma_A, weight, self.n,
                              self.params.pixel_size_A)[0]

    def _other_signal(self, rng: np.random.Generator) -> np.ndarray:
        """Unscaled, CTF-free projection (n, n) of a particle that is none of the species.

        :func:`other_phantom` (same diameter, another design) at a uniform SO(3)
        rotation, uniform psi and a shift of the real particles' spread: a contaminant or
        another complex of similar size in the same sample.
        """
        p = self.params
        ph = other_phantom(p.diameter_A, p.pixel_size_A,
                           tuple(q.name for q in self.phantoms))
        full = rot_z(np.deg2rad(rng.uniform(0.0, 360.0, 1))) @ random_rotations(rng, 1)
        return self._project_shifted(ph.coords_A, ph.sigma_A, ph.weight, full, rng)

    def _junk_signal(self, row: int, code: int) -> np.ndarray:
        """Unscaled, CTF-free signal (n, n) of an aggregate, broken or other-particle row."""
        p, n = self.params, self.n
        rng = rng_for(p.seed, STREAM_JUNK, row)
        diam_px = p.particle_diameter_px
        if code == _BROKEN:
            return self._broken_signal(rng)
        if code == _OTHER:
            return self._other_signal(rng)
        if code != _AGG:
            return np.zeros((n, n), dtype=np.float32)
        if rng.random() < 0.7:  # 2-4 overlapping particles
            k = int(rng.integers(2, 5))
            species = rng.integers(0, p.n_species, k)
            rot = random_rotations(rng, k)
            fil = random_filament_rotations(rng, k)
            is_fil = np.asarray(self.is_filament)[species]
            rot = np.where(is_fil[:, None, None], fil, rot)
            shift = np.clip(rng.normal(0.0, 0.22 * diam_px, (k, 2)), -0.3 * n, 0.3 * n)
            return self.render_species(species, rot, rng.uniform(0, 360, k), shift).sum(0)
        # one big irregular blob of wide Gaussians
        m = int(rng.integers(30, 61))
        xy = rng.normal(0.0, 0.2 * diam_px, (1, m, 2))
        sigma = rng.uniform(0.05, 0.12, m) * diam_px
        mass = rng.uniform(1.5, 2.5) * np.mean([ph.weight.sum() for ph in self.phantoms])
        w = rng.uniform(0.3, 1.0, m)
        return render.render_atoms(xy, sigma, w * (mass / w.sum()), n)[0]

    def _ice_gradient(self, row: int) -> np.ndarray:
        """Return a strong ramp plus a broad bump (n, n), in units of the noise sigma."""
        n = self.n
        rng = rng_for(self.params.seed, STREAM_JUNK, row)
        theta = rng.uniform(0.0, 2 * np.pi)
        amp = rng.uniform(2.0, 4.0)
        c = np.arange(n) - n // 2
        y, x = np.meshgrid(c, c, indexing="ij")
        ramp = amp * (x * np.cos(theta) + y * np.sin(theta)) / (n / 2)
        bx, by = rng.uniform(-0.3 * n, 0.3 * n, 2)
        width = rng.uniform(0.2, 0.4) * n
        bump = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5) * np.exp(
            -((x - bx) ** 2 + (y - by) ** 2) / (2 * width**2))
        return (ramp + bump).astype(np.float32)

    def _noise(self, start: int, stop: int) -> np.ndarray:
        """Coloured unit-variance noise of rows [start, stop), (stop-start, n, n)."""
        n = self.n
        out = np.empty((stop - start, n, n), dtype=np.float32)
        for b in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
            if self._noise_cache is not None and self._noise_cache[0] == b:
                block = self._noise_cache[1]
            else:
                rng = rng_for(self.params.seed, STREAM_NOISE, b)
                white = rng.standard_normal((NOISE_BLOCK, n, n), dtype=np.float32)
                block = render.colour_noise(white, self.noise_filter)
                self._noise_cache = (b, block)
            b0 = b * NOISE_BLOCK
            lo, hi = max(start, b0), min(stop, b0 + NOISE_BLOCK)
            out[lo - start: hi - start] = block[lo - b0: hi - b0]
        return out

    # -- rows -----------------------------------------------------------------------
    def generate(self, start: int, stop: int, noise: bool = True, keep_clean: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Images of rows [start, stop), their noise-free versions and signal variances.

        Rows are made :data:`SUB_BATCH` at a time, so temporaries (CTF, Fourier
        transforms) stay small whatever the range.

        Parameters
        ----------
        start, stop : int
            Row range.
        noise : bool
            Add the noise (else images equal the clean images).
        keep_clean : bool
            Return the clean images (``None`` otherwise, saving memory).

        Returns
        -------
        images : ndarray (stop - start, n, n) float32
        clean : ndarray (stop - start, n, n) float32 or None
        signal_variance : ndarray (stop - start,) float64
            Variance of each clean image over the box.
        """
        m = stop - start
        images = np.empty((m, self.n, self.n), dtype=np.float32)
        clean = np.empty_like(images) if keep_clean else None
        signal_var = np.empty(m, dtype=np.float64)
        for s0 in range(start, stop, SUB_BATCH):
            s1 = min(s0 + SUB_BATCH, stop)
            c = self._clean(s0, s1)
            signal_var[s0 - start: s1 - start] = np.var(c, axis=(1, 2), dtype=np.float64)
            if clean is not None:
                clean[s0 - start: s1 - start] = c
            if noise:
                c += self._noise(s0, s1)
            images[s0 - start: s1 - start] = c
        return images, clean, signal_var

    def _clean(self, start: int, stop: int) -> np.ndarray:
        """Noise-free images of rows [start, stop), (stop - start, n, n) float32."""
        pl = self.plan
        assert pl is not None
        rows = np.arange(start, stop)
        code = pl.junk_code[rows]
        src = pl.source_species[rows]
        signal = np.zeros((rows.size, self.n, self.n), dtype=np.float32)
        sel = np.nonzero(src >= 0)[0]
        if sel.size:
            r = rows[sel]
            signal[sel] = self.render_species(src[sel], pl.rotation[r], pl.psi_deg[r],
                                              pl.shift_px[r])
        for j in np.nonzero((code == _AGG) | (code == _BROKEN) | (code == _OTHER))[0]:
            signal[j] = self._junk_signal(int(rows[j]), int(code[j]))
        signal *= (self.scale * pl.contrast[rows]).astype(np.float32)[:, None, None]
        clean = self.ctf_modulate(signal, pl.defocus_u_A[rows], pl.defocus_v_A[rows],
                                  pl.defocus_angle_deg[rows])
        for j in np.nonzero(code == _ICE)[0]:
            clean[j] += self._ice_gradient(int(rows[j]))
        return clean
