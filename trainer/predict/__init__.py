"""Zero-shot scores for real radiographs (DICOM, PNG, JPEG) from a trained run."""
