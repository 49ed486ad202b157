"""embed-ct: the stage config and the layout of the CT-CLIP embedding cache (HDF5).

The cache holds, per volume, the frozen CT-CLIP latents that training and
evaluation read instead of running CT-CLIP again.

HDF5 layout (``EMBED_LAYOUT_VERSION`` 2); N rows, one per embedded volume, in the
order they were committed (look rows up by ``ids``, not by manifest position):

==============================  ===============  ================================================
path                            shape, dtype     holds
==============================  ===============  ================================================
``ids``                         (N,) utf-8 str   volume id (manifest ``volume_id``), unique
``scan_ids``                    (N,) utf-8 str   scan id: reconstructions of a scan share a report
``ct``                          (N, D) f32       CT latent, L2-normalised (``encode_ct``)
``report``                      (N, D) f32       report latent, L2-normalised (``encode_text``)
``labels``                      (N, 18) u8       the 18 CT-RATE labels: 1, 0, or 255 = unknown
``row_sha256``                  (N,) utf-8 str   sha256 of the manifest row the latents were made from
``label_names``                 (18,) utf-8 str  the label order (CT-RATE column order)
``temperature``                 () f32           the checkpoint's temperature; logit scale = exp(t)
``prompts/<set>/positive``      (18, D) f32      encode_text of the positive prompt per label
``prompts/<set>/negative``      (18, D) f32      encode_text of the negative prompt per label
``prompts/<set>/positive_text`` (18,) utf-8 str  the exact prompt texts embedded
``prompts/<set>/negative_text`` (18,) utf-8 str
``failures/ids``                (F,) utf-8 str   items that failed in the last run that tried them
``failures/reasons``            (F,) utf-8 str   why (one line each)
==============================  ===============  ================================================

``row_sha256`` (:func:`embed_row_sha256`) covers the row fields that decide a row's values:
``ct_path``, ``spacing``, ``orientation``, ``slope``, ``intercept``, ``findings``,
``impressions``, ``labels`` and ``scan_id``. A later run whose manifest gives an id already
in the cache another hash is refused, naming the ids, so a cache never mixes latents of old
and new inputs under one id. Version history: 1 had no ``row_sha256``; a version-1 cache
differs in identity and is refused (rebuild it with ``--overwrite``).

D is the CT-CLIP config's ``dim_latent``: 512 for the official model.
``<set>`` is each key of :data:`PROMPT_TEMPLATES`; the group's attributes
``template_positive`` / ``template_negative`` hold the templates.

Row datasets are chunked (``ROW_CHUNK`` rows) and gzip-compressed with the
shuffle filter, so that a few rows can be read without reading the file.

Dimensions are named with HDF5 dimension scales (what netCDF-4 readers and
xarray use): ``item`` (scale ``ids``), ``latent``, ``label`` (scale
``label_names``) and ``failure`` (scale ``failures/ids``). Caches made before
these scales have none; nothing in the pipeline reads them.

Root attributes: ``layout_version``; ``provenance`` (JSON of
:class:`schemas.provenance.Provenance`: stage config, software version,
manifest sha256 of the run that created the file, checkpoint sha256, creation
time); ``identity`` (JSON of :class:`EmbedIdentity`, everything that decides a
row's values) and ``identity_sha256``; the most used of these flattened for
convenience: ``checkpoint_sha256``, ``preprocessing`` (JSON),
``manifest_sha256``, ``software_version``, ``created``; and
``manifest_sha256_history`` (JSON list: every manifest a run added rows from).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.base import StageConfig
from schemas.ct import CTLoadConfig
from schemas.manifest import ManifestRow
from schemas.provenance import json_sha256

EMBED_LAYOUT_VERSION = 2
LATENT_DIM = 512  # of the official CT-CLIP; a cache's width is its model config's dim_latent
ROW_CHUNK = 256  # rows per HDF5 chunk: 512 KiB of float32 latents, a cheap unit to read and decompress
LABEL_MISSING = 255  # in ``labels``: the source has no such label (manifest null)

# name -> (positive template, negative template); "{p}" is the label name.
PROMPT_TEMPLATES: dict[str, tuple[str, str]] = {
    "x2ct_clip": ("There is {p}.", "There is no {p}."),  # X2CT-CLIP zero-shot from a radiograph
    "ct_clip": ("{p} is present.", "{p} is not present."),  # CT-CLIP's own CT zero-shot protocol
}

# The manifest row fields a cache row's values depend on (the CT and how it is read, the report, what is stored).
ROW_IDENTITY_FIELDS = (
    "ct_path",
    "spacing",
    "orientation",
    "slope",
    "intercept",
    "findings",
    "impressions",
    "labels",
    "scan_id",
)


def embed_row_sha256(row: ManifestRow) -> str:
    """What identifies a cache row's inputs: the sha256 of the row's :data:`ROW_IDENTITY_FIELDS`."""
    return json_sha256(row.model_dump(mode="json", include=set(ROW_IDENTITY_FIELDS)))


Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16"]


class EmbedConfig(StageConfig):
    """Options of ``x2ct-pipeline embed-ct``."""

    manifest: Path = Field(description="Manifest (JSON Lines) of the volumes to embed.")
    checkpoint: Path = Field(description="CT-CLIP checkpoint (.pt state dict), e.g. CT-CLIP_v2.pt.")
    tokenizer: Path = Field(description="Folder holding the CXR-BERT vocab.txt.")
    out: Path = Field(description="Embedding cache to create or extend (.h5).")
    model: str = Field(
        default="official",
        description="CT-CLIP size: a named config ('official', 'tiny') or a JSON file.",
    )
    device: Device = Field(default="auto", description="'auto': CUDA when available, else CPU.")
    precision: Precision = Field(
        default="fp32",
        description="'bf16': bfloat16 autocast (AMX on CPU, tensor cores on GPU); part of the cache identity.",
    )
    batch_size: int = Field(default=2, ge=1, le=256, description="Volumes per forward pass.")
    workers: int = Field(
        default=2,
        ge=0,
        description="CPU workers that decode and preprocess volumes; 0 runs everything in this process (no Dask).",
    )
    scheduler: str | None = Field(
        default=None,
        description="Address of a running Dask scheduler (its workers: resources decode=1 / model=1) instead of a LocalCluster.",
    )
    model_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads of a CPU model worker (default: cores minus workers, at least 1; "
        "all cores with workers=0).",
    )
    prefetch: int | None = Field(
        default=None,
        ge=1,
        description="Volumes in flight (being decoded, decoded, or in the model) at most (default: as many as "
        "prefetch_gib holds, at least two batches per model worker plus one per decode worker).",
    )
    prefetch_gib: float = Field(
        default=2.0, gt=0, description="Memory (GiB) for decoded volumes in flight, when prefetch is not given."
    )
    commit_every: int = Field(default=64, ge=1, description="Rows per commit (one shard file, written atomically).")
    merge_fraction: float = Field(
        default=0.25,
        gt=0.0,
        description="Shards are merged into the HDF5 file once they hold this fraction of its rows (and at the end).",
    )
    merge_min_rows: int = Field(default=1024, ge=1, description="...or at least this many rows.")
    max_failures: int = Field(
        default=100, ge=0, description="Stop (exit status 1) once more items than this have failed, as simulate-drr."
    )
    overwrite: bool = Field(default=False, description="Discard an existing cache and embed everything again.")
    ct: CTLoadConfig = Field(default_factory=CTLoadConfig)
    progress: bool = Field(default=True, description="Show a tqdm progress bar.")

    @model_validator(mode="after")
    def _prefetch_holds_a_batch(self) -> EmbedConfig:
        # A batch is submitted once batch_size volumes are decoded; fewer in flight would never fill one.
        if self.prefetch is not None and self.prefetch < self.batch_size:
            raise ValueError(f"prefetch ({self.prefetch}) must be at least batch_size ({self.batch_size})")
        return self


class EmbedIdentity(BaseModel):
    """Everything that decides the values of a cache row. Two runs may share a file only if equal."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    checkpoint_sha256: str
    tokenizer_sha256: str = Field(description="sha256 of the tokenizer's vocab.txt.")
    model_config_json: dict[str, Any] = Field(description="The CT-CLIP config (sizes and preprocessing target).")
    ct_load: dict[str, Any] = Field(description="CTLoadConfig: HU policy, padding, air check.")
    precision: Precision
    layout_version: int = EMBED_LAYOUT_VERSION

    def sha256(self) -> str:
        return json_sha256(self.model_dump(mode="json"))

    def preprocessing(self) -> dict[str, Any]:
        """The part that says how a volume and a report become model input."""
        return {
            "ct_load": self.ct_load,
            "model_config": self.model_config_json,
            "precision": self.precision,
        }

    def differences(self, other: EmbedIdentity) -> list[str]:
        """Names of the fields that differ, with both values shortened, for an error message."""
        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        out = []
        for key in mine:
            if mine[key] != theirs.get(key):
                a, b = json.dumps(mine[key])[:80], json.dumps(theirs.get(key))[:80]
                out.append(f"{key}: file has {b}, this run has {a}")
        return out
