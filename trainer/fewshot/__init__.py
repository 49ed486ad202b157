"""Few-shot linear probes on frozen radiograph latents (X2CT-CLIP, arXiv 2503.02162)."""
