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
    """Unit quaternions (..., 4) as (w, x, y, z) -> rotation matrices (..., 3, 3)."""
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


def select_views(
    rng: np.random.Generator, n_views: int, filament: bool = False, n_candidates: int = 1024
) -> np.ndarray:
    """``n_views`` well-separated view rotations, shape (n_views, 3, 3).

    Greedy farthest-point selection among random candidates, with the axial distance
    ``arccos |d_i . d_j|`` between viewing directions (a direction and its opposite give
    mirror-image projections, which look alike, so they count as close).
    """
    if filament:
        cand = random_filament_rotations(rng, n_candidates)
    else:
        cand = random_rotations(rng, n_candidates)
    d = cand[:, 2, :]  # (n_candidates, 3) viewing directions
    chosen = [0]
    dist = np.arccos(np.clip(np.abs(d @ d[0]), 0.0, 1.0))
    for _ in range(1, n_views):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.arccos(np.clip(np.abs(d @ d[nxt]), 0.0, 1.0)))
    return cand[chosen]


def representative_views(n: int = 12, filament: bool = False) -> np.ndarray:
    """A fixed spread of ``n`` view rotations (Fibonacci directions on a hemisphere).

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
    """A rotation whose third row is the unit vector ``d`` (it maps ``d`` onto e_z)."""
    d = np.asarray(d, dtype=float)
    d = d / np.linalg.norm(d)
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(helper, d)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    return np.stack([e1, e2, d])
