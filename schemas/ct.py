"""How CT volumes become HU arrays: the HU policy and loading limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StageConfig

HUPolicy = Literal["header", "csv", "auto"]

# Canonical voxel orientation of every loaded volume (nibabel axcodes): axis 0
# runs towards the patient's Left, axis 1 Posterior, axis 2 Superior. This is
# DICOM's patient frame (LPS) and, as far as a public listing of CT-RATE headers
# shows, the on-disk axis order of CT-RATE files, so CT-RATE volumes load without
# any axis change (docs/ctclip-compatibility.md says how to check real files).
CANONICAL_ORIENTATION = "LPS"


class CTLoadConfig(StageConfig):
    """Options of :func:`pipeline.ct_io.load_ct`; part of every stage config that reads CTs."""

    hu_policy: HUPolicy = Field(
        default="header",
        description=(
            "'header': NIfTI scl_slope/scl_inter only (newer CT-RATE files store HU this way); "
            "'csv': raw stored values times the manifest slope plus intercept, header ignored; "
            "'auto': header scaling when the header has any, otherwise the manifest's. "
            "Scaling is applied exactly once in every case."
        ),
    )
    padding_below_hu: float = Field(
        default=-1500.0,
        description="Voxels below this (HU) after scaling are scanner padding outside the field of view and become air.",
    )
    air_check: bool = Field(default=True, description="Refuse volumes whose air does not read about -1000 HU.")
    air_tolerance_hu: float = Field(default=120.0, gt=0, description="Allowed distance of the air peak from -1000 HU.")
    max_voxels: int = Field(
        default=768 * 1024 * 1024,
        gt=0,
        description="Volumes with more voxels are refused before their data is read (768 Mi voxels = 3 GiB float32).",
    )
