"""Duplicate picks: particles of one micrograph whose modelled centres are too close.

The modelled centre of a particle in micrograph pixels is its picked location plus
the translation found by the classification (particle centre minus box centre), so
two picks of one physical particle converge to the same point. Among pairs closer
than ``min_separation_px`` the better-scoring particle is kept (greedy, best first).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def find_duplicates(micrograph, x_px, y_px, score, min_separation_px: float) -> np.ndarray:
    """Boolean mask (N,): True for particles rejected as duplicates.

    Parameters
    ----------
    micrograph : array (N,) of hashable micrograph ids
    x_px, y_px : array (N,) modelled particle centres in micrograph pixels
    score : array (N,) higher is better
    min_separation_px : float
    """
    x = np.asarray(x_px, dtype=np.float64)
    y = np.asarray(y_px, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    codes, _ = _factorize(micrograph)
    rejected = np.zeros(x.size, dtype=bool)
    order_all = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order_all])) + 1
    for group in np.split(order_all, bounds):
        if group.size < 2:
            continue
        pts = np.stack([x[group], y[group]], axis=1)
        pairs = cKDTree(pts).query_pairs(min_separation_px, output_type="ndarray")
        if pairs.size == 0:
            continue
        neighbours = [[] for _ in range(group.size)]
        for a, b in pairs:
            neighbours[a].append(b)
            neighbours[b].append(a)
        keep_local = np.zeros(group.size, dtype=bool)
        dead = np.zeros(group.size, dtype=bool)
        for j in np.argsort(-s[group], kind="stable"):
            if dead[j]:
                continue
            keep_local[j] = True
            for nb in neighbours[j]:
                if not keep_local[nb]:
                    dead[nb] = True
        rejected[group[dead]] = True
    return rejected


def _factorize(values):
    arr = np.asarray(values)
    uniq, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes, uniq
