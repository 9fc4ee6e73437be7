r"""Information per particle: how much a perfect class could tell about one image.

Before any class exists, the particle images themselves say how strong their signal is
against their noise. Low-pass each image at ``res_A`` (a disc holding the fraction
``f`` of the Fourier coefficients; at most Nyquist) and compare the pixel variance
inside the particle's circle (diameter D, ``n_in`` pixels) with the variance outside
it, where there is only noise:

.. math::

    I_i = \left(\frac{\operatorname{Var}_{\mathrm{in}}(x_i)}
        {\operatorname{Var}_{\mathrm{out}}(x_i)} - 1\right) n_{\mathrm{in}}\, f,
    \qquad I = \operatorname{mean}_i I_i .

The bracket is the low-passed particle's signal-to-noise ratio per pixel; white noise
of pixel variance :math:`\sigma^2` keeps :math:`f\sigma^2` after the low-pass, so by
Parseval ``I`` estimates :math:`\sum_q |\mathrm{CTF}\,A(q)|^2/\sigma^2(q)` over the
coefficients up to ``res_A``: twice the log-likelihood ratio that a noise-free class at
the particle's true pose would give it (``docs/algorithm.md``, "Pose marginalization").
It does not depend on the box size, nor on D as long as the circle holds the particle
and some background is left outside it. Pure array code, any array namespace.
"""

from __future__ import annotations

import numpy as np

from cryoclass.backend import array_namespace

#: Resolution (Å) at which the information is measured.
INFO_RES_A = 20.0
#: Pixels outside the particle's circle (plus a 2 px gap) needed for a noise estimate,
#: as a fraction of the box.
MIN_BACKGROUND_FRACTION = 0.05


def regions(n: int, pixel_A: float, diameter_A: float):
    """Inside / outside masks (n, n) of the particle's circle; outside keeps a 2 px gap."""
    y, x = np.mgrid[:n, :n] - n / 2
    r = np.hypot(x, y)
    radius = 0.5 * diameter_A / pixel_A
    return r < radius, r > radius + 2.0


def information_sums(images, pixel_A: float, diameter_A: float,
                     res_A: float = INFO_RES_A, chunk: int = 32) -> np.ndarray:
    """Per-block sums for :func:`information_estimate`: ``[sum_i I_i, count]``.

    Parameters
    ----------
    images : real (P, n, n) raw particle images (any scale; only variance ratios count)

    Returns
    -------
    float64 (2,) host array; images whose outside variance is zero (blank) are skipped.
    """
    xp = array_namespace(images)
    n = images.shape[-1]
    inside, outside = regions(n, pixel_A, diameter_A)
    if outside.sum() < MIN_BACKGROUND_FRACTION * n * n or inside.sum() < 4 or not len(images):
        return np.zeros(2)
    f = np.fft.fftfreq(n) / pixel_A
    k = np.hypot(f[:, None], f[None, :])
    disc = k <= 1.0 / max(res_A, 2.0 * pixel_A)
    lowpass, inside_d, outside_d = (xp.asarray(a) for a in (disc, inside, outside))
    total, count = 0.0, 0
    for a in range(0, len(images), chunk):  # bounded temporaries for large boxes
        x = xp.fft.ifft2(xp.fft.fft2(xp.asarray(images[a:a + chunk], dtype=np.float64))
                         * lowpass).real
        v_in = x[:, inside_d].var(axis=1)
        v_out = x[:, outside_d].var(axis=1)
        ok = v_out > 0
        total += float(xp.where(ok, v_in / xp.where(ok, v_out, 1.0) - 1.0, 0.0).sum())
        count += int(ok.sum())
    samples = float(inside.sum()) * float(disc.mean())
    return np.array([total * samples, float(count)])


def information_estimate(sums) -> float:
    """``I`` from summed :func:`information_sums` (NaN when nothing could be measured)."""
    total, count = float(sums[0]), float(sums[1])
    return total / count if count > 0 else float("nan")
