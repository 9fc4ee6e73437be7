"""Screening of particle images before classification: images without information.

An image is *constant* when its pixel values span no more than ``rel_tol`` of their
largest magnitude (``max - min <= rel_tol * max |x|``; an all-zero image is constant).
Blank extractions at micrograph edges are all zeros. Such an image has zero variance:
normalizing it divides by zero, and its likelihood is flat over classes and poses, so
it must not enter the classification. Pure array code, any array namespace.
"""

from __future__ import annotations

from cryoclass.backend import array_namespace

#: Relative peak-to-peak below which an image counts as constant (float32 resolves
#: about 1.2e-7 of a value, so a smaller spread is rounding, not signal).
CONSTANT_REL_TOL = 1e-6


def constant_images(images, rel_tol: float = CONSTANT_REL_TOL):
    """Flag the constant images of a stack.

    Parameters
    ----------
    images : real array (P, n, n)

    Returns
    -------
    bool array (P,): True where ``max - min <= rel_tol * max |x|`` over the image.
    """
    xp = array_namespace(images)
    flat = images.reshape(images.shape[0], -1)
    if flat.shape[1] == 0:
        return xp.ones(images.shape[0], dtype=bool)
    hi = flat.max(axis=1)
    lo = flat.min(axis=1)
    scale = xp.maximum(xp.abs(hi), xp.abs(lo))
    return (hi - lo) <= rel_tol * scale
