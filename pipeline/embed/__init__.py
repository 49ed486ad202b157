"""embed-ct: run the frozen CT-CLIP once over a manifest into a resumable HDF5 embedding cache."""
