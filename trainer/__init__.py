"""The CXR encoder, losses, training, evaluation and prediction (imports ``pipeline``; never imported by it)."""
