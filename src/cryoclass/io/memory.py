"""Particles held in memory (benchmarks, notebooks): the ParticleTable interface on arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


class ArrayImageSource:
    """Serves rows of an in-memory (N, n, n) stack like :class:`cryoclass.io.mrc.ImageSource`."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.box_px = int(images.shape[-1])

    def read(self, rows) -> np.ndarray:
        """Images of the given rows, float32."""
        return np.asarray(self.images[np.asarray(rows)], dtype=np.float32)

    def close(self) -> None:
        """Nothing to release (the images are the caller's array)."""


@dataclass
class InMemoryTable:
    """A particle set of arrays: ``meta`` has the canonical columns of ParticleTable."""

    meta: pd.DataFrame
    images: np.ndarray
    has_locations: bool = False
    source_path: str = "<memory>"

    @property
    def box_px(self) -> int:
        """Box size in pixels."""
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.meta)

    def image_source(self, max_open: int = 64) -> ArrayImageSource:
        """Image reader over the array (``max_open`` is for the file-backed readers)."""
        return ArrayImageSource(self.images)


def table_from_simulation(images: np.ndarray, truth: dict, pixel_size_A: float,
                          voltage_kv: float = 300.0, cs_mm: float = 2.7,
                          amplitude_contrast: float = 0.07) -> InMemoryTable:
    """Wrap :func:`cryoclass.simulate.simulate_images` output as a particle table."""
    n = images.shape[0]
    meta = pd.DataFrame({
        "pixel_size_A": np.full(n, pixel_size_A),
        "defocus_u_A": truth["defocus_u_A"], "defocus_v_A": truth["defocus_v_A"],
        "defocus_angle_rad": np.deg2rad(truth["defocus_angle_deg"]),
        "voltage_kv": voltage_kv, "cs_mm": cs_mm, "amplitude_contrast": amplitude_contrast,
        "phase_shift_rad": 0.0, "bfactor_A2": 0.0,
    })
    return InMemoryTable(meta, images)
