"""Real-space masks and background normalization.

A soft circular mask is 1 inside ``inner_radius_px``, falls to 0 at ``outer_radius_px``
with a raised cosine, and is 0 outside:
``m(r) = 0.5 * (1 + cos(pi * (r - r_in) / (r_out - r_in)))`` for ``r_in < r < r_out``.
Radii are measured from the image centre pixel ``(n // 2, n // 2)``.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from cryoclass.backend import array_namespace


def pixel_radius(n: int, xp: ModuleType = np, center=(0.0, 0.0)):
    """Distance of each pixel of an n-box from the centre (plus an offset ``(y, x)``)."""
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c - center[0], c - center[1], indexing="ij")
    return xp.asarray(np.sqrt(x * x + y * y))


def soft_circular_mask(n: int, inner_radius_px: float, outer_radius_px: float,
                       xp: ModuleType = np, dtype=np.float32):
    """Raised-cosine circular mask of shape (n, n)."""
    r = np.asarray(pixel_radius(n, np))
    r_in = float(inner_radius_px)
    r_out = max(float(outer_radius_px), r_in + 1e-6)
    m = np.where(r <= r_in, 1.0, 0.0)
    edge = (r > r_in) & (r < r_out)
    m[edge] = 0.5 * (1.0 + np.cos(np.pi * (r[edge] - r_in) / (r_out - r_in)))
    return xp.asarray(m.astype(dtype))


def normalize_background(images, radius_px: float):
    """Subtract the mean and divide by the std of pixels outside ``radius_px``.

    Parameters
    ----------
    images : array (P, n, n)

    Returns
    -------
    array (P, n, n), same dtype; images with a constant background are only centred.
    """
    xp = array_namespace(images)
    n = images.shape[-1]
    outside = pixel_radius(n, xp) > radius_px
    if int(outside.sum()) < 16:  # tiny box: use the outer ring instead
        outside = pixel_radius(n, xp) > 0.8 * (n // 2)
    bg = images[:, outside].astype(np.float64)
    mean = bg.mean(axis=1)
    std = bg.std(axis=1)
    std = xp.where(std > 0, std, 1.0)
    return ((images - mean[:, None, None]) / std[:, None, None]).astype(images.dtype)
