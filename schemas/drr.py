"""simulate-drr: the renderer's config (geometry, physics, post-processing), the stage config
and the layout of the Zarr store it writes.

Everything under :class:`DRRRenderConfig` (plus the CT loading policy) decides the pixels,
so its hash guards a store against being continued with a different config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.base import StageConfig
from schemas.ct import CTLoadConfig
from schemas.provenance import json_sha256

View = Literal["pa", "ap", "lateral"]
Projection = Literal["cone", "parallel"]
RenderMode = Literal["physics", "mean-hu"]
Device = Literal["auto", "cpu", "cuda"]


def unique_views(v: list[View]) -> list[View]:
    """Validator of every ``views`` option: each view at most once."""
    if len(set(v)) != len(v):
        raise ValueError(f"views repeat: {v}")
    return v


class GeometryConfig(StageConfig):
    """Where source and detector sit, in patient coordinates, relative to the volume's centre.

    The isocentre is the centre of the CT volume's bounding box. The detector is square,
    ``size`` x ``size`` pixels covering ``detector_mm`` x ``detector_mm``, perpendicular to
    the central ray. Parallel beam uses the same detector, without magnification.
    """

    projection: Projection = Field(default="cone", description="'cone': point source, flat detector; 'parallel'.")
    size: int = Field(default=512, ge=16, le=4096, description="Detector pixels per side.")
    detector_mm: float = Field(
        default=430.0, gt=0, description="Detector side length (mm); a clinical cassette is 430 mm."
    )
    sid_mm: float = Field(default=1800.0, gt=0, description="Source-to-image (detector) distance (mm), cone beam.")
    sod_mm: float = Field(
        default=1650.0, gt=0, description="Source-to-isocentre (patient centre) distance (mm), cone beam."
    )

    @model_validator(mode="after")
    def _source_before_detector(self):
        if self.sod_mm >= self.sid_mm:
            raise ValueError(
                f"sod_mm ({self.sod_mm}) must be smaller than sid_mm ({self.sid_mm}): the patient sits between source and detector"
            )
        return self


class PhysicsConfig(StageConfig):
    """HU -> linear attenuation: mu = mu_water * (1 + HU/1000), clipped at 0.

    Above ``bone_threshold_hu`` the HU excess is multiplied by ``bone_scale`` (continuous at the
    threshold); values > 1 mimic the stronger photoelectric absorption of bone at radiographic
    energies. 1.0 (default) is the plain water-equivalent model.
    """

    mu_water_per_mm: float = Field(
        default=0.02, gt=0, description="Attenuation of water (1/mm), about 0.02 at 60-70 keV."
    )
    bone_threshold_hu: float = Field(default=300.0, description="HU above which bone scaling applies.")
    bone_scale: float = Field(default=1.0, gt=0, description="Multiplier of the HU excess above the threshold.")


class PostConfig(StageConfig):
    """Line integrals -> display image (uint16).

    Poisson noise (optional) acts on the transmitted intensity I = I0 exp(-L); the displayed
    value is -log(I/I0) (bone bright), windowed between two percentiles of the image to
    [0, 1], raised to ``gamma``, optionally CLAHE-equalised, then scaled to 0..65535.
    """

    window_percentiles: tuple[float, float] = Field(
        default=(0.5, 99.5), description="Window (percentiles of the image)."
    )
    gamma: float = Field(default=1.0, gt=0, description="Display gamma applied after windowing (< 1 brightens lungs).")
    clahe: bool = Field(default=False, description="Contrast-limited adaptive histogram equalisation.")
    clahe_clip: float = Field(default=2.0, gt=0, description="CLAHE clip limit (multiples of the mean bin count).")
    clahe_tiles: int = Field(default=8, ge=1, le=64, description="CLAHE tiles per side.")
    noise_photons: float | None = Field(
        default=None, gt=0, description="Unattenuated photons per pixel for Poisson noise; None: no noise."
    )
    seed: int = Field(default=0, description="Noise seed; each item's noise is a function of (seed, volume id, view).")

    @field_validator("window_percentiles")
    @classmethod
    def _ordered(cls, v):
        lo, hi = v
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"window_percentiles must satisfy 0 <= low < high <= 100, got {v}")
        return v


class DRRRenderConfig(StageConfig):
    """Everything that decides the pixels of one DRR."""

    mode: RenderMode = Field(
        default="physics",
        description=(
            "'physics': Beer-Lambert DRR with the geometry below; 'mean-hu': the X2CT-CLIP authors' image, "
            "the mean of clipped HU along the beam, parallel beam, min-max scaled."
        ),
    )
    views: list[View] = Field(
        default_factory=lambda: list[View](["pa"]), min_length=1, description="Views rendered per volume."
    )
    geometry: GeometryConfig = Field(default_factory=GeometryConfig)
    physics: PhysicsConfig = Field(default_factory=PhysicsConfig)
    post: PostConfig = Field(default_factory=PostConfig)
    mean_hu_clip: tuple[float, float] = Field(default=(-1000.0, 1000.0), description="HU clip of the 'mean-hu' mode.")
    slab: int = Field(default=16, ge=1, le=512, description="Voxel planes processed together (memory vs. speed).")

    _unique = field_validator("views")(unique_views)

    @model_validator(mode="after")
    def _mean_hu_is_parallel(self):
        if self.mode == "mean-hu" and self.geometry.projection != "parallel":
            # The authors' image is a parallel projection; force it so that the hash says so.
            self.geometry = self.geometry.model_copy(update={"projection": "parallel"})
        return self


class SimulateDRRConfig(StageConfig):
    manifest: Path = Field(description="Manifest (JSON Lines) of the volumes to render.")
    out: Path = Field(description="Zarr v3 store (a folder) to create or continue.")
    render: DRRRenderConfig = Field(default_factory=DRRRenderConfig)
    ct: CTLoadConfig = Field(default_factory=CTLoadConfig)
    workers: int | None = Field(
        default=None,
        ge=1,
        description="Local Dask worker processes (default: one per core, at most one per 3 GB of memory).",
    )
    scheduler: str | None = Field(default=None, description="Address of a running Dask scheduler; no local cluster.")
    device: Device = Field(default="auto", description="'auto': CUDA when available, else CPU.")
    threads_per_worker: int | None = Field(
        default=None, ge=1, description="Torch threads per worker (default: cores / workers)."
    )
    max_failures: int = Field(
        default=100, ge=0, description="Stop and exit non-zero once more items than this have failed."
    )
    overwrite: bool = Field(default=False, description="Delete the store and render everything again.")
    line_integrals: bool = Field(default=False, description="Also store the raw line integrals (float16) for research.")
    limit: int | None = Field(default=None, ge=1, description="Render only the first N manifest rows (trial runs).")
    progress: bool = Field(default=True, description="Show a tqdm progress bar.")

    @model_validator(mode="after")
    def _one_cluster(self):
        if self.workers is not None and self.scheduler is not None:
            raise ValueError("give either workers (local cluster) or scheduler (existing cluster), not both")
        return self

    def content_sha256(self) -> str:
        """Hash of what decides the stored pixels: render config and CT loading policy."""
        payload = {
            "render": self.render.model_dump(mode="json"),
            "ct": self.ct.model_dump(mode="json"),
            "line_integrals": self.line_integrals,
        }
        return json_sha256(payload)


class PreviewConfig(StageConfig):
    store: Path = Field(description="Zarr store written by simulate-drr.")
    out: Path = Field(description="PNG contact sheet to write.")
    n: int = Field(default=16, ge=1, le=400, description="Items shown (the first finished ones).")
    columns: int = Field(default=4, ge=1, le=20, description="Items per row.")
    thumb: int = Field(default=256, ge=32, le=1024, description="Thumbnail side (pixels).")

    @field_validator("out")
    @classmethod
    def _png(cls, v: Path) -> Path:
        if v.suffix.lower() != ".png":
            raise ValueError(f"the contact sheet is a PNG: give a file name ending in .png, got {str(v)!r}")
        return v


# ---------------------------------------------------------------------------------------------
# Store layout (Zarr v3 group)


class ItemStatus:
    """Values of the per-item ``status`` array (the completion mask is ``status == DONE``)."""

    PENDING = 0
    DONE = 1
    FAILED = 2


class DRRStoreLayout(BaseModel):
    """Names, shapes and chunking of the arrays of a simulate-drr store.

    ``images`` (N, V, H, W) uint16: one chunk per image, one shard per item, so a trainer
    reads one image with one small range request and a task writes exactly one shard file.
    ``status`` (N,) uint8 and ``errors`` (N,) str: one chunk per item, written by the task
    that owns the item, after its images. ``status_snapshot`` (N,) uint8, one chunk, is a
    copy written by the driver alone at the end of each run (fast to read).
    ``ids`` (N,) str and ``labels`` (N, 18) int8 (-1: no label) are written once, when the
    store is created.

    Every array names its dimensions (Zarr v3 ``dimension_names``: item, view, row, column,
    label), ``view`` (V,) and ``label`` (18,) hold the view and label names, and the per-item
    arrays name ``ids`` as their coordinate (the CF ``coordinates`` attribute), so
    ``xarray.open_zarr(store, consolidated=False)`` opens the store as one Dataset indexed by
    view and label with the volume ids along ``item``. Stores made before these names have
    no ``dimension_names`` (the pipeline's readers use the arrays by name and accept both).
    """

    model_config = ConfigDict(frozen=True)

    n_items: int
    views: list[View]
    size: int
    line_integrals: bool = False

    images: str = "images"
    line_integrals_name: str = "line_integrals"
    ids: str = "ids"
    labels: str = "labels"
    status: str = "status"
    status_snapshot: str = "status_snapshot"
    errors: str = "errors"
    view_names: str = "view"
    label_names: str = "label"
    zstd_level: int = 3

    def dimension_names(self, array: str) -> tuple[str, ...]:
        """The named dimensions of one of the store's arrays."""
        image = ("item", "view", "row", "column")
        return {
            self.images: image,
            self.line_integrals_name: image,
            self.labels: ("item", "label"),
            self.view_names: ("view",),
            self.label_names: ("label",),
        }.get(array, ("item",))

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        return (self.n_items, len(self.views), self.size, self.size)

    @property
    def image_chunks(self) -> tuple[int, int, int, int]:
        return (1, 1, self.size, self.size)

    @property
    def image_shards(self) -> tuple[int, int, int, int]:
        return (1, len(self.views), self.size, self.size)


# uint16 mapping of the display image: value = round(clip(display, 0, 1) * 65535).
UINT16_MAX = 65535
