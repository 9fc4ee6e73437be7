"""Real-space operations on class averages after each M-step.

Order (SPEC §3): soft circular mask, re-centering, filament verticalization,
non-negativity, clamp-solvent. Re-centering and verticalization return the
shift/rotation applied so particle poses can follow their class:
a class moved by ``-c`` (content at ``c`` brought to the centre) changes a particle's
shift from ``t`` to ``t + R(psi) c``; a class rotated by ``-alpha`` changes its psi
to ``psi + alpha``.
"""

from __future__ import annotations

import numpy as np

from cryoclass.backend import array_namespace
from cryoclass.numerics.fourier import to_fourier, to_real
from cryoclass.numerics.masks import pixel_radius, soft_circular_mask
from cryoclass.numerics.transforms import rotate_images, shift_images


def apply_mask(classes, inner_radius_px: float, outer_radius_px: float):
    """Multiply (K, n, n) class images by a raised-cosine circular mask."""
    xp = array_namespace(classes)
    n = classes.shape[-1]
    m = soft_circular_mask(n, inner_radius_px, outer_radius_px, xp, classes.dtype)
    return classes * m[None]


def centre_of_mass(classes, threshold: float = 0.2, binary: bool = False):
    """Centre of mass ``(x, y)`` px of pixels above ``threshold * max`` per class: (K, 2)."""
    xp = array_namespace(classes)
    n = classes.shape[-1]
    c = xp.asarray(np.arange(n) - n // 2, dtype=np.float64)
    mx = classes.reshape(classes.shape[0], -1).max(axis=1)
    sel = classes > (threshold * mx)[:, None, None]
    w = xp.where(sel, 1.0 if binary else classes, 0.0).astype(np.float64)
    tot = w.sum(axis=(1, 2))
    ok = tot > 0
    tot = xp.where(ok, tot, 1.0)
    cx = (w * c[None, None, :]).sum(axis=(1, 2)) / tot
    cy = (w * c[None, :, None]).sum(axis=(1, 2)) / tot
    out = xp.stack([cx, cy], axis=1)
    return xp.where(ok[:, None] & (mx[:, None] > 0), out, 0.0)


def recenter(classes, threshold: float = 0.2, binary: bool = False):
    """Shift each class so its thresholded centre of mass is at the centre.

    Returns
    -------
    classes : (K, n, n), com_px : (K, 2) the (x, y) centre of mass that was moved to 0.
    """
    com = centre_of_mass(classes, threshold, binary)
    return shift_images(classes, -com), com


def filament_angle(classes, threshold: float = 0.2):
    """Angle (rad) of each class's principal axis from the vertical (y) axis: (K,).

    Rotating the class by ``-angle`` makes its long axis vertical.
    """
    xp = array_namespace(classes)
    n = classes.shape[-1]
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    cls = np.asarray(classes.get() if hasattr(classes, "get") else classes, dtype=np.float64)
    out = np.zeros(cls.shape[0])
    for k in range(cls.shape[0]):
        img = cls[k]
        w = np.where(img > threshold * img.max(), img, 0.0) if img.max() > 0 else 0 * img
        tot = w.sum()
        if tot <= 0:
            continue
        mx, my = (w * x).sum() / tot, (w * y).sum() / tot
        cxx = (w * (x - mx) ** 2).sum() / tot
        cyy = (w * (y - my) ** 2).sum() / tot
        cxy = (w * (x - mx) * (y - my)).sum() / tot
        theta = 0.5 * np.arctan2(2 * cxy, cxx - cyy)  # long axis angle from x
        a = theta - np.pi / 2  # from y
        out[k] = (a + np.pi / 2) % np.pi - np.pi / 2
    return xp.asarray(out)


def verticalize(classes, threshold: float = 0.2, pad: int = 2):
    """Rotate each class so its principal axis is vertical; returns (classes, alpha)."""
    alpha = filament_angle(classes, threshold)
    return rotate_images(classes, -np.asarray(alpha.get() if hasattr(alpha, "get") else alpha),
                         pad), alpha


def non_negative(classes):
    """Clip class pixels at zero."""
    xp = array_namespace(classes)
    return xp.maximum(classes, 0)


def clamp_solvent(classes, inner_radius_px: float, outer_radius_px: float,
                  smooth_sigma_px: float = 1.0):
    """Zero the solvent (outside the mask), smooth, and clip at zero."""
    xp = array_namespace(classes)
    n = classes.shape[-1]
    inside = pixel_radius(n, xp) <= outer_radius_px
    out = xp.where(inside[None], classes, 0)
    from cryoclass.numerics.fourier import radius_grid

    r = radius_grid(n, xp)
    sig_k = n / (2 * np.pi * smooth_sigma_px)
    filt = xp.exp(-0.5 * (r / sig_k) ** 2)
    out = to_real(to_fourier(out) * filt[None], n).astype(classes.dtype)
    return xp.maximum(out, 0)
