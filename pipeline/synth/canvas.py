"""The HU volume being painted, with the masks that later painting steps need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.synth.geometry import Grid


@dataclass
class Canvas:
    grid: Grid
    hu: np.ndarray  # float32, grid shape
    lung: dict[str, np.ndarray] = field(default_factory=dict)  # side -> bool mask of the normal lung
    lumen: np.ndarray | None = None  # bronchial lumen occupancy (air bronchograms need it)
    metal: np.ndarray | None = None  # metal occupancy, applied after the kernel blur

    @classmethod
    def empty(cls, grid: Grid, value: float) -> Canvas:
        return cls(grid, np.full(grid.shape, value, dtype=np.float32))

    @property
    def coords(self):
        return self.grid.coords()

    @property
    def lungs(self) -> np.ndarray:
        return self.lung["right"] | self.lung["left"]

    def blend(self, frac: np.ndarray, value, box=None, where: np.ndarray | None = None) -> None:
        """hu <- hu + frac * (value - hu), in ``box`` (slices) and only where ``where`` is true."""
        hu = self.hu if box is None else self.hu[box]
        f = frac if where is None else frac * where
        value = np.asarray(value, dtype=np.float32)
        if f.shape == hu.shape and value.ndim == 0 and hu.flags.c_contiguous:
            # most shapes cover a small part of the volume: update only the voxels they touch
            flat_f = np.ascontiguousarray(f).reshape(-1)
            idx = np.flatnonzero(flat_f)
            if idx.size < flat_f.size // 4:
                flat = hu.reshape(-1)
                flat[idx] += flat_f[idx] * (value - flat[idx])
                return
        hu += f * (value - hu)

    def sub(self, lo, hi) -> Canvas | None:
        """A canvas on the voxels inside the mm box [lo, hi] whose ``hu`` is a view: painting it paints this one.

        Painters of shapes that fill only part of the volume run on it, so a 512^3 volume is not swept whole.
        """
        box = self.grid.index_box(np.asarray(lo, float), np.asarray(hi, float))
        if box is None:
            return None
        return Canvas(self.grid.sub(box), self.hu[box], {k: v[box] for k, v in self.lung.items()})

    def metal_layer(self) -> np.ndarray:
        if self.metal is None:
            self.metal = np.zeros(self.grid.shape, dtype=np.float32)
        return self.metal
