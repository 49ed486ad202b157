"""Summary of a CT-CLIP checkpoint file: parts present, parameter counts, temperature, key problems."""

from __future__ import annotations

from pathlib import Path

from schemas.ctclip import CTCLIPConfig

# Parameter groups reported by ``inspect``, by key prefix (first match wins).
GROUPS = (
    ("text encoder (BERT)", "text_transformer."),
    ("image encoder (CTViT)", "visual_transformer."),
    ("to_text_latent", "to_text_latent."),
    ("to_visual_latent", "to_visual_latent."),
    ("unused *_extra projections", "to_"),
    ("temperature", "temperature"),
)


def inspect_checkpoint(path: str | Path, cfg: CTCLIPConfig | str = "official") -> dict:
    from pipeline.ctclip.checkpoint import compare_keys, expected_shapes, file_sha256, read_state_dict
    from pipeline.ctclip.config import get_config

    cfg = get_config(cfg)
    state = read_state_dict(path)
    counts = {name: 0 for name, _ in GROUPS}
    for key, tensor in state.items():
        for name, prefix in GROUPS:
            if key.startswith(prefix):
                counts[name] += tensor.numel()
                break
    temperature = state.get("temperature")
    return {
        "file": str(path),
        "sha256": file_sha256(path),
        "config": cfg.name,
        "keys": len(state),
        "elements": sum(t.numel() for t in state.values()),
        "elements_by_part": counts,
        "temperature": None if temperature is None else float(temperature),
        "logit_scale": None if temperature is None else float(temperature.float().exp()),
        **compare_keys(state, expected_shapes(cfg)),
    }


def format_summary(s: dict) -> str:
    lines = [
        f"{s['file']}",
        f"  sha256       {s['sha256']}",
        f"  keys         {s['keys']}",
        f"  elements     {s['elements']:,} (parameters and buffers)",
    ]
    lines += [f"    {name:<28} {n:>13,}" for name, n in s["elements_by_part"].items()]
    if s["temperature"] is None:
        lines.append("  temperature  absent")
    else:
        lines.append(f"  temperature  {s['temperature']:.6g} (logit scale exp(t) = {s['logit_scale']:.6g})")
    lines.append(f"  parts        {', '.join(s['parts']) or 'none'} (against config '{s['config']}')")
    if s["allowed_extra"]:
        lines.append(f"  ignored      {', '.join(s['allowed_extra'])} (allow-listed)")
    ok = not (s["missing"] or s["unexpected"] or s["shape_mismatch"])
    lines.append(f"  strict load  {'OK' if ok and s['parts'] else 'FAILS'}")
    for title in ("missing", "unexpected", "shape_mismatch"):
        for item in s[title][:15]:
            lines.append(f"    {title}: {item}")
        if len(s[title]) > 15:
            lines.append(f"    ... {len(s[title]) - 15} more {title}")
    return "\n".join(lines)
