"""Orientations: uniform SO(3) rotations, well-separated discrete views, in-plane rotation.

A view rotation ``R_v`` (3x3) acts on object coordinates: ``X' = R_v X``; the image is
the projection of ``X'`` along z. Its viewing direction in the object frame is therefore
``d = R_v^T e_z`` (the third row of ``R_v``). The in-plane angle psi rotates the projected
image counter-clockwise in (x, y): the full rotation is ``Rz(psi) @ R_v``.

Filaments lie flat in the ice: their viewing directions stay within
:data:`FILAMENT_MAX_TILT_DEG` of the plane perpendicular to the filament axis (object x).
"""

from __future__ import annotations

import numpy as np

#: Largest out-of-plane tilt of a filament axis (deg).
FILAMENT_MAX_TILT_DEG = 20.0


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Convert quaternions (..., 4) as (w, x, y, z) to rotation matrices (..., 3, 3)."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    out = np.empty(q.shape[:-1] + (3, 3))
    out[..., 0, 0] = 1 - 2 * (y * y + z * z)
    out[..., 0, 1] = 2 * (x * y - z * w)
    out[..., 0, 2] = 2 * (x * z + y * w)
    out[..., 1, 0] = 2 * (x * y + z * w)
    out[..., 1, 1] = 1 - 2 * (x * x + z * z)
    out[..., 1, 2] = 2 * (y * z - x * w)
    out[..., 2, 0] = 2 * (x * z - y * w)
    out[..., 2, 1] = 2 * (y * z + x * w)
    out[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return out


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rotations uniform on SO(3), shape (n, 3, 3)."""
    return quaternion_to_matrix(rng.standard_normal((n, 4)))


def rot_z(psi_rad) -> np.ndarray:
    """Rotation(s) about z by ``psi_rad`` (counter-clockwise in x, y): shape (..., 3, 3)."""
    psi = np.asarray(psi_rad, dtype=np.float64)
    c, s = np.cos(psi), np.sin(psi)
    out = np.zeros(psi.shape + (3, 3))
    out[..., 0, 0], out[..., 0, 1] = c, -s
    out[..., 1, 0], out[..., 1, 1] = s, c
    out[..., 2, 2] = 1.0
    return out


def random_filament_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random rotations of a filament (axis = object x) that keep its axis near the plane.

    ``R = Rz(alpha) @ Rx_tilt @ Rx(phi)`` style composition: a spin ``phi`` about the
    filament axis (uniform), then a tilt of the axis out of the image plane (uniform in
    +-FILAMENT_MAX_TILT_DEG), then an in-plane angle (uniform).
    """
    phi = rng.uniform(0.0, 2 * np.pi, n)
    tilt = np.deg2rad(rng.uniform(-FILAMENT_MAX_TILT_DEG, FILAMENT_MAX_TILT_DEG, n))
    alpha = rng.uniform(0.0, 2 * np.pi, n)
    c, s = np.cos(phi), np.sin(phi)
    spin = np.zeros((n, 3, 3))
    spin[:, 0, 0] = 1.0
    spin[:, 1, 1], spin[:, 1, 2] = c, -s
    spin[:, 2, 1], spin[:, 2, 2] = s, c
    ct, st = np.cos(tilt), np.sin(tilt)
    tilt_m = np.zeros((n, 3, 3))  # about y: moves the x axis towards z
    tilt_m[:, 0, 0], tilt_m[:, 0, 2] = ct, st
    tilt_m[:, 1, 1] = 1.0
    tilt_m[:, 2, 0], tilt_m[:, 2, 2] = -st, ct
    return rot_z(alpha) @ tilt_m @ spin


def candidate_views(rng: np.random.Generator, n: int, filament: bool = False) -> np.ndarray:
    """``n`` random candidate view rotations (n, 3, 3) (flat-lying ones for a filament)."""
    return random_filament_rotations(rng, n) if filament else random_rotations(rng, n)


def polar_images(images: np.ndarray, n_theta: int = 90) -> np.ndarray:
    """Resample centred images (m, n, n) on a polar grid (m, n_r, n_theta), r-weighted.

    Rows are radii ``1 .. n//2 - 1`` px, columns angles ``2 pi j / n_theta``; each row is
    multiplied by ``sqrt(r)`` so that plain sums approximate area integrals.
    """
    from scipy.ndimage import map_coordinates

    m, n = images.shape[0], images.shape[-1]
    r = np.arange(1, n // 2, dtype=float)
    theta = 2 * np.pi * np.arange(n_theta) / n_theta
    x = r[:, None] * np.cos(theta)[None, :] + n // 2
    y = r[:, None] * np.sin(theta)[None, :] + n // 2
    out = np.empty((m, r.size, n_theta))
    for i in range(m):
        out[i] = map_coordinates(images[i], [y, x], order=1)
    return out * np.sqrt(r)[None, :, None]


def rotational_correlation(polar: np.ndarray) -> np.ndarray:
    """Pairwise correlation maximised over in-plane rotation, (m, m), of polar images.

    Means are removed and norms divided out per image, so the diagonal is one.
    """
    p = polar - polar.mean(axis=(1, 2), keepdims=True)
    p /= np.linalg.norm(p, axis=(1, 2), keepdims=True)
    f = np.fft.rfft(p, axis=2)  # (m, n_r, n_theta//2+1)
    cross = np.einsum("irk,jrk->ijk", f, np.conj(f))
    cc = np.fft.irfft(cross, n=p.shape[2], axis=2)
    return cc.max(axis=2)


def select_distinct(projections: np.ndarray, n_views: int) -> list[int]:
    """Greedily pick ``n_views`` projections that are least alike after in-plane rotation.

    Starts from the first candidate and adds, each time, the candidate whose largest
    rotational correlation with those already chosen is smallest.

    Parameters
    ----------
    projections : ndarray (n_candidates, n, n)
        Centred candidate projections.
    n_views : int
        Number to choose (<= n_candidates).

    Returns
    -------
    list of int
        Indices of the chosen candidates.
    """
    corr = rotational_correlation(polar_images(projections))
    chosen = [0]
    worst = corr[0].copy()
    worst[0] = np.inf
    for _ in range(1, n_views):
        nxt = int(np.argmin(worst))
        chosen.append(nxt)
        worst = np.maximum(worst, corr[nxt])
        worst[chosen] = np.inf
    return chosen


def representative_views(n: int = 12, filament: bool = False) -> np.ndarray:
    """Return a fixed spread of ``n`` views (Fibonacci directions on a hemisphere).

    Used to store example clean projections when views are continuous.
    """
    out = np.empty((n, 3, 3))
    golden = np.pi * (3.0 - np.sqrt(5.0))
    for i in range(n):
        if filament:
            # spin about the axis spread over 180 deg, tilt over +-max
            phi = np.pi * i / n
            tilt = np.deg2rad(FILAMENT_MAX_TILT_DEG) * (2.0 * ((i * 0.618034) % 1.0) - 1.0)
            c, s, ct, st = np.cos(phi), np.sin(phi), np.cos(tilt), np.sin(tilt)
            spin = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
            tm = np.array([[ct, 0, st], [0, 1, 0], [-st, 0, ct]])
            out[i] = tm @ spin
            continue
        z = 1.0 - (i + 0.5) / n  # upper hemisphere
        r = np.sqrt(1.0 - z * z)
        d = np.array([r * np.cos(golden * i), r * np.sin(golden * i), z])
        out[i] = rotation_to_z(d)
    return out


def rotation_to_z(d: np.ndarray) -> np.ndarray:
    """Return a rotation whose third row is the unit vector ``d`` (it maps ``d`` to e_z)."""
    d = np.asarray(d, dtype=float)
    d = d / np.linalg.norm(d)
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(helper, d)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    return np.stack([e1, e2, d])
