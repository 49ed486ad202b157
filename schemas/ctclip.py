"""Sizes and preprocessing target of a CT-CLIP model (the frozen teacher).

Named configs live as JSON in ``pipeline/ctclip/model_configs/`` (``official``
matches ``CT-CLIP_v2.pt``; ``tiny`` is for tests and the demo). Layer widths
that the official code fixes (attention scale 8, 2-layer position-bias MLP,
GEGLU hidden size ``int(4 * 2/3 * dim)``) are not options here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Precision = Literal["fp32", "bf16"]


class CTCLIPVisualConfig(BaseModel):
    """The CTViT image encoder and its vector quantiser."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(default=512, gt=0, description="Token width.")
    image_size: int = Field(default=480, gt=0, description="In-plane size (voxels) of the input, H = W.")
    num_slices: int = Field(default=240, gt=0, description="Depth (voxels) of the input, D.")
    patch_size: int = Field(default=20, gt=0, description="In-plane patch size (voxels).")
    temporal_patch_size: int = Field(default=10, gt=0, description="Patch size along depth (voxels).")
    spatial_depth: int = Field(default=4, ge=1, description="Layers of the spatial transformer.")
    temporal_depth: int = Field(default=4, ge=1, description="Layers of the temporal (depth) transformer.")
    heads: int = Field(default=8, gt=0)
    dim_head: int = Field(default=32, gt=0)
    codebook_size: int = Field(default=8192, gt=1, description="Rows of the cosine-similarity codebook.")
    channels: int = Field(default=1, gt=0)
    quantize: bool = Field(
        default=True,
        description="Replace each token by the nearest codebook row before pooling (the official CTViT). A token "
        "then carries one of codebook_size codes (9-13 bits): the codebook follows the common patterns (anatomy), "
        "and a small or rare finding inside a token (a wire, a few cm of emphysema) is rounded away. Small configs "
        "trained from scratch may turn it off (no codebook in the state dict); see docs/teacher.md.",
    )
    patch_norm: bool = Field(
        default=True,
        description="LayerNorm over each patch's voxels before the patch projection (the official CTViT). It removes "
        "the patch's mean and scale: at fine voxels the texture inside a patch carries the findings, but at coarse "
        "ones (a few mm) a patch inside the lung is nearly uniform and its mean density is the finding (emphysema, "
        "ground glass), so small configs may turn it off.",
    )

    @model_validator(mode="after")
    def _check_divisible(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_slices % self.temporal_patch_size:
            raise ValueError(
                f"num_slices {self.num_slices} is not a multiple of temporal_patch_size {self.temporal_patch_size}"
            )
        return self

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T, H, W): depth slabs, rows, columns."""
        return (
            self.num_slices // self.temporal_patch_size,
            self.image_size // self.patch_size,
            self.image_size // self.patch_size,
        )

    @property
    def pooled_dim(self) -> int:
        """Width of the depth-pooled, flattened token map fed to ``to_visual_latent`` (294,912 official)."""
        _, h, w = self.grid
        return h * w * self.dim


class CTCLIPTextConfig(BaseModel):
    """The BERT report encoder (CXR-BERT-specialized architecture for the official model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(default=30522, gt=0)
    hidden_size: int = Field(default=768, gt=0)
    num_hidden_layers: int = Field(default=12, ge=1)
    num_attention_heads: int = Field(default=12, gt=0)
    intermediate_size: int = Field(default=3072, gt=0)
    max_position_embeddings: int = Field(default=512, gt=0)
    type_vocab_size: int = Field(default=2, gt=0)
    layer_norm_eps: float = Field(default=1e-12, gt=0)
    max_length: int = Field(default=512, gt=0, description="Tokenizer truncation/padding length (tokens).")
    pooling: Literal["cls", "sentence_mean"] = Field(
        default="cls",
        description="How a text becomes one latent: 'cls' (official: the CLS token of the whole text) or "
        "'sentence_mean' (each sentence encoded alone, CLS latents averaged, then normalised). A small text "
        "encoder trained from scratch on long, similar reports gives nearly the same CLS for every report and "
        "contrastive training collapses; sentences are short and distinct. Same weights either way.",
    )


class CTCLIPPreprocessConfig(BaseModel):
    """What the official inference loader does to a CT before the encoder (see pipeline.ctclip.preprocess)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spacing_mm: tuple[float, float, float] = Field(
        default=(0.75, 0.75, 1.5), description="Target voxel size (mm) along array axes 0, 1, 2 (x, y, z)."
    )
    shape: tuple[int, int, int] = Field(
        default=(480, 480, 240), description="Target array shape (x, y, z) after centre crop / pad."
    )
    orientation: str = Field(
        default="LPS",
        description="Axcodes of the array axes the model was trained on: the on-disk voxel order of CT-RATE "
        "files, which the official loader uses as is (docs/ctclip-compatibility.md). load_ct gives LPS; any other value "
        "here reorders the LPS array to it before the official steps.",
    )
    hu_min: float = -1000.0
    hu_max: float = 1000.0
    hu_scale: float = Field(
        default=1000.0,
        gt=0,
        description="Clipped HU are divided by this (the official single channel; windows scale by their own width).",
    )
    channel_windows: tuple[tuple[float, float], ...] | None = Field(
        default=None,
        description="Display windows (low, high HU), one input channel each: channel k is HU clipped to window k "
        "and mapped linearly onto [-1, 1] (air pads each as it sees it; pad_value and hu_scale then do not apply), "
        "after the clip to [hu_min, hu_max] and the resampling; visual.channels must equal their number. None: the "
        "official single channel, clip(HU) / hu_scale. Small models need them: the patch embedding's LayerNorm "
        "ignores the length of a patch's feature vector, so the density of a nearly uniform patch (lung at a few mm "
        "voxels) is lost unless a window spreads it (docs/teacher.md), e.g. lung (-1000, -400), mediastinum "
        "(-160, 240), bone and metal (200, 3000).",
    )

    @property
    def n_channels(self) -> int:
        return len(self.channel_windows) if self.channel_windows else 1

    pad_value: float = Field(default=-1.0, description="Value of padded voxels (after scaling).")

    @field_validator("channel_windows")
    @classmethod
    def _check_windows(cls, v):
        for lo, hi in v or ():
            if not lo < hi:
                raise ValueError(f"a channel window is (low, high) HU with low < high; got ({lo}, {hi})")
        return v

    @field_validator("orientation")
    @classmethod
    def _check_orientation(cls, v: str) -> str:
        v = v.upper()
        axis_of = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if len(v) != 3 or sorted(axis_of.get(c, -1) for c in v) != [0, 1, 2]:
            raise ValueError(f"orientation must name one of L/R, A/P and S/I per axis, e.g. 'LPS'; got {v!r}")
        return v


class CTCLIPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "official"
    dim_latent: int = Field(default=512, gt=0)
    visual: CTCLIPVisualConfig = CTCLIPVisualConfig()
    text: CTCLIPTextConfig = CTCLIPTextConfig()
    preprocess: CTCLIPPreprocessConfig = CTCLIPPreprocessConfig()
    precision: Precision = Field(
        default="fp32",
        description="Image encoder arithmetic: 'fp32' (matches the official code) or 'bf16' autocast "
        "(AMX on CPU, tensor cores on GPU; about 5x faster on CPU, latents within cosine 0.999).",
    )

    @model_validator(mode="after")
    def _check_shapes_agree(self):
        x, y, z = self.preprocess.shape
        v = self.visual
        if self.preprocess.n_channels != v.channels:
            raise ValueError(
                f"preprocess makes {self.preprocess.n_channels} channel(s) (channel_windows "
                f"{self.preprocess.channel_windows}) but visual.channels is {v.channels}; make them equal"
            )
        if (x, y, z) != (v.image_size, v.image_size, v.num_slices):
            raise ValueError(
                f"preprocess.shape {self.preprocess.shape} must equal (image_size, image_size, num_slices) = "
                f"({v.image_size}, {v.image_size}, {v.num_slices})"
            )
        return self
