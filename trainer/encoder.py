"""The CXR encoder: an open_clip vision tower, a bias-free projection to the teacher's latent
width, then L2 normalisation.

Towers (always built with pretrained weights off; nothing is ever downloaded):

* any open_clip model config's ``vision_cfg`` (a model name such as ``ViT-B-16``, or a JSON
  file in open_clip's model-config format), built by open_clip itself; its output (the
  config's ``embed_dim``) feeds our projection;
* any timm backbone through open_clip's ``TimmModel`` (``timm:<name>``), with the trunk's
  classifier removed and its tokens / feature map mean-pooled (``pool='avg'``, no open_clip
  projection): for Swin-T that is the X2CT-CLIP head, mean-pooled tokens ->
  ``Linear(768 -> 512, bias=False)``.

Presets: ``tiny`` (a 2-layer 64-px ViT, for tests), ``resnet-mini`` (open_clip's ModifiedResNet, the
CLIP ResNet with an attention pool, at one bottleneck per stage and base width 16 on 128-px input:
the demo's student), ``swin-t``
(``timm:swin_tiny_patch4_window7_224``, the paper's), ``vit-b-16`` (open_clip ``ViT-B-16``),
``resnet-50`` (``timm:resnet50``).

Normalisation comes from the tower's own config, never from its name: open_clip's
``preprocess_cfg`` of the model config (open_clip's defaults where the config has none), or
the timm model's ``pretrained_cfg`` mean/std. A user initialising from weights trained with
other statistics overrides them explicitly (``norm_mean``/``norm_std``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from schemas.errors import PipelineError

log = logging.getLogger(__name__)

PRESETS = {
    "tiny": "config:tiny",
    "resnet-mini": "config:resnet_mini",
    "swin-t": "timm:swin_tiny_patch4_window7_224",
    "vit-b-16": "ViT-B-16",
    "resnet-50": "timm:resnet50",
}


class EncoderError(PipelineError):
    """An unknown encoder name, an unreadable config, or initial weights that do not fit."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild the encoder: stored in every run's config and checkpoint."""

    source: str  # "open_clip" | "timm"
    name: str  # what the user asked for
    model_cfg: dict[str, Any]  # open_clip model config ({"embed_dim", "vision_cfg"}) or {"timm_model_name"}
    feature_dim: int  # tower output width
    latent_dim: int  # projection output: the teacher's latent width
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EncoderSpec:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


def resolve_encoder(
    name: str,
    latent_dim: int,
    image_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> EncoderSpec:
    """Turn a preset, open_clip model name, ``timm:<name>`` or JSON path into an EncoderSpec."""
    target = PRESETS.get(name, name)
    if target.startswith("timm:"):
        import timm

        timm_name = target[len("timm:") :]
        if not timm.is_model(timm_name):
            raise EncoderError(f"encoder {name!r}: timm has no model {timm_name!r}; see timm.list_models()")
        trunk = timm.create_model(timm_name, pretrained=False, num_classes=0)
        cfg: dict[str, Any] = dict(getattr(trunk, "pretrained_cfg"))  # noqa: B009 (nn.Module attributes type as Tensor | Module)
        size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
        return EncoderSpec(
            source="timm",
            name=name,
            model_cfg={"timm_model_name": timm_name},
            feature_dim=int(getattr(trunk, "num_features")),  # noqa: B009
            latent_dim=latent_dim,
            image_size=size,
            mean=tuple(mean or cfg["mean"]),
            std=tuple(std or cfg["std"]),
        )
    model_cfg = _open_clip_config(name, target)
    from open_clip.transform import PreprocessCfg

    pp = {**asdict(PreprocessCfg()), **model_cfg.get("preprocess_cfg", {})}
    vision = dict(model_cfg["vision_cfg"])
    if image_size is not None:
        vision["image_size"] = image_size
    size = vision.get("image_size", 224)
    if not isinstance(size, int):
        size = int(size[0])
    return EncoderSpec(
        source="open_clip",
        name=name,
        model_cfg={"embed_dim": int(model_cfg["embed_dim"]), "vision_cfg": vision},
        feature_dim=int(model_cfg["embed_dim"]),
        latent_dim=latent_dim,
        image_size=size,
        mean=tuple(mean or pp["mean"]),
        std=tuple(std or pp["std"]),
    )


def _open_clip_config(name: str, target: str) -> dict[str, Any]:
    if target.startswith("config:"):
        text = resources.files("trainer").joinpath(f"encoder_configs/{target[len('config:') :]}.json").read_text()
        return json.loads(text)
    path = Path(target)
    if path.suffix == ".json":
        if not path.is_file():
            raise EncoderError(f"encoder config {path} does not exist")
        try:
            cfg = json.loads(path.read_text())
        except ValueError as e:
            raise EncoderError(f"encoder config {path} is not valid JSON: {e}") from None
        if "vision_cfg" not in cfg or "embed_dim" not in cfg:
            raise EncoderError(f"encoder config {path} needs 'embed_dim' and 'vision_cfg' (open_clip's format)")
        return cfg
    import open_clip

    cfg = open_clip.get_model_config(target)
    if cfg is None:
        raise EncoderError(
            f"unknown encoder {name!r}: use a preset ({', '.join(PRESETS)}), an open_clip model name "
            "(open_clip.list_models()), 'timm:<name>', or an open_clip model config .json"
        )
    if cfg["vision_cfg"].get("hf_model_name") or cfg["vision_cfg"].get("timm_model_pretrained"):
        cfg = json.loads(json.dumps(cfg))
        cfg["vision_cfg"]["timm_model_pretrained"] = False  # never download
    return cfg


class CXREncoder(nn.Module):
    """tower -> Linear(feature_dim -> latent_dim, bias=False) -> L2 normalise (float32 out)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.tower = build_tower(spec)
        self.proj = nn.Linear(spec.feature_dim, spec.latent_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.tower(images)
        if isinstance(features, tuple):  # open_clip towers built with output_tokens return (pooled, tokens)
            features = features[0]
        return F.normalize(self.proj(features).float(), dim=-1)


def build_tower(spec: EncoderSpec) -> nn.Module:
    if spec.source == "timm":
        from open_clip.timm_model import TimmModel

        # proj='none' with pool='avg': the timm trunk with its classifier removed, features mean-pooled.
        return TimmModel(
            spec.model_cfg["timm_model_name"],
            embed_dim=spec.feature_dim,
            image_size=spec.image_size,
            pool="avg",
            proj="none",
            pretrained=False,
        )
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(spec.model_cfg["embed_dim"], spec.model_cfg["vision_cfg"])


def build_encoder(spec: EncoderSpec, init: str | Path | None = None) -> CXREncoder:
    encoder = CXREncoder(spec)
    if init is not None:
        load_init_weights(encoder, Path(init))
    return encoder


# ---- initial weights --------------------------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from a local file: safetensors, or a torch file read with weights_only."""
    if not path.is_file():
        raise EncoderError(f"initial weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderError(f"initial weights {path} cannot be read as a weights-only torch file: {e}") from None
    if not isinstance(obj, dict):
        raise EncoderError(f"initial weights {path} hold a {type(obj).__name__}, not a state dict")
    return obj


def load_init_weights(encoder: CXREncoder, path: Path) -> str:
    """Load a run checkpoint (whole encoder), an open_clip model state dict (``visual.*`` ->
    the tower) or a timm state dict (-> the timm trunk; its classifier is left out). The
    projection stays random unless the file is one of our runs. Returns the kind found."""
    obj = read_state_dict(path)
    if "model" in obj and "encoder_spec" in obj:  # one of our checkpoints
        spec = EncoderSpec.from_json(obj["encoder_spec"])
        if (spec.source, spec.model_cfg, spec.latent_dim) != (
            encoder.spec.source,
            encoder.spec.model_cfg,
            encoder.spec.latent_dim,
        ):
            raise EncoderError(
                f"{path} holds a {spec.name!r} encoder with latent width {spec.latent_dim}; "
                f"this run builds {encoder.spec.name!r} with width {encoder.spec.latent_dim}"
            )
        _load(encoder, obj["model"], path, strict=True)
        return "run"
    state = obj.get("state_dict", obj.get("model", obj))
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("visual.") for k in state):
        tower_state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        _load(encoder.tower, tower_state, path, strict=True)
        return "open_clip"
    if encoder.spec.source == "timm":
        trunk: nn.Module = getattr(encoder.tower, "trunk")  # noqa: B009
        wanted = trunk.state_dict()
        # A timm checkpoint carries the classifier our trunk dropped (num_classes=0): leave it out.
        extra = [k for k in state if k not in wanted]
        _load(trunk, {k: v for k, v in state.items() if k in wanted}, path, strict=True)
        if extra:
            log.info("%s: %d keys not used by the trunk (classifier): %s", path, len(extra), ", ".join(extra[:4]))
        return "timm"
    _load(encoder.tower, state, path, strict=True)
    return "open_clip"


def _load(module: nn.Module, state: dict[str, torch.Tensor], path: Path, strict: bool) -> None:
    own = module.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with another shape ({', '.join(wrong[:3])})")
        raise EncoderError(f"initial weights {path} do not fit the encoder: {'; '.join(parts)}")
    module.load_state_dict(state, strict=strict)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
