"""x2ct-pipeline data stages: manifests, CT loading, synthetic data, DRRs, CT-CLIP embeddings."""

from pipeline._version import __version__

__all__ = ["__version__"]
