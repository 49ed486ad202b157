"""Radiograph files for predict tests: DICOM built with pydicom, PNG/JPEG with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def chest_like(size: int = 96, seed: int = 0) -> np.ndarray:
    """A float image in [0, 1] with radiograph-like structure: bright mediastinum and ribs, dark lungs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.35 + 0.5 * np.exp(-(((xx - 0.5) / 0.12) ** 2))  # mediastinum
    img -= 0.25 * (np.exp(-(((xx - 0.28) / 0.12) ** 2 + ((yy - 0.5) / 0.3) ** 2)))  # right lung
    img -= 0.25 * (np.exp(-(((xx - 0.72) / 0.12) ** 2 + ((yy - 0.5) / 0.3) ** 2)))  # left lung
    img += 0.08 * (np.sin(yy * 40) > 0.6)  # ribs
    img += 0.02 * rng.normal(size=img.shape)
    return np.clip((img - img.min()) / (img.max() - img.min()), 0, 1)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    signed: bool = False,
    modality: str = "DX",
    frames: int = 1,
    **attributes,
) -> Path:
    """A minimal, valid DICOM file (explicit VR little endian) holding ``pixels`` as stored values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-123456"
    ds.PatientBirthDate = "19600101"
    ds.AccessionNumber = "ACC-42"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    arr = np.asarray(pixels)
    if frames > 1:
        arr = np.stack([arr] * frames)
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = arr.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, image01: np.ndarray, bits: int = 8) -> Path:
    from PIL import Image

    if bits == 8:
        Image.fromarray(np.round(image01 * 255).astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(np.round(image01 * 65535).astype(np.uint16)).save(path)
    return path
