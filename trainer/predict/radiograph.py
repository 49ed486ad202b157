"""Read a real radiograph (DICOM, PNG, JPEG) into the project's display image.

The display image is what every encoder input starts from (the run contract): float32
(H, W) in [0, 1], bright = dense, as a standard radiograph and as the DRR store's
uint16 / 65535. Whatever the file, the last step is the rule simulate-drr applies to DRRs:
the 0.5th and 99.5th percentiles of the image map to 0 and 1, clipped
(``pipeline.drr.postprocess.window``), so real and simulated radiographs share one
convention, and a 12-bit image stored in 16 bits, an 8-bit export of it and its 16-bit
export all end up alike.

DICOM (pydicom): a single frame of one sample per pixel (multi-frame and colour files are
refused), any bit depth and signedness; then the Modality LUT (Rescale Slope/Intercept or
a Modality LUT Sequence), then the VOI LUT or the first window (Window Center/Width) when the
file has one, as a viewer would show it; then the percentile window; then inversion when the
photometric interpretation is MONOCHROME1 (low values bright) or, for MONOCHROME2, when the
Presentation LUT Shape is INVERSE. Modalities that are not projection radiographs (CT, MR,
...) are refused. PNG and JPEG (Pillow): 8-bit gray, 16-bit gray, or RGB whose channels are
equal (a gray image saved in colour); a colour image is refused.

Identifying DICOM attributes (patient name, id, birth date, accession number, study date
and instance UID) are never read into the result unless ``keep_identifiers`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.drr.postprocess import window
from schemas.errors import PipelineError

WINDOW_PERCENTILES = (0.5, 99.5)  # simulate-drr's default display window (schemas.drr.PostConfig)
MIN_SIDE = 32  # pixels; anything smaller is not a radiograph
# Projection radiography (and secondary captures of it); anything else is refused.
RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "DR", "XR", "PX", "OT"}
IDENTIFIERS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate", "StudyInstanceUID")
_DESCRIPTIVE = ("Modality", "ViewPosition", "BodyPartExamined", "PhotometricInterpretation", "BitsStored")
_PNG_MAGIC, _JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


class RadiographError(PipelineError):
    """A file that is not a readable single 2-D radiograph; the message says why and what to do."""


@dataclass
class Radiograph:
    image: np.ndarray  # float32 (H, W) in [0, 1], bright = dense
    kind: str  # "dicom" | "png" | "jpeg"
    meta: dict[str, Any] = field(default_factory=dict)


def file_kind(path: Path) -> str:
    """'png', 'jpeg' or 'dicom' from the file's first bytes (a DICOM without preamble: from its suffix)."""
    with open(path, "rb") as f:
        head = f.read(132)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom", ""):
        return "dicom"
    raise RadiographError(f"{path}: not a DICOM, PNG or JPEG file; give a radiograph in one of those formats")


def read_radiograph(path: str | Path, keep_identifiers: bool = False) -> Radiograph:
    """The display image of one radiograph file; :class:`RadiographError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise RadiographError(f"{path}: no such file")
    kind = file_kind(path)
    if kind == "dicom":
        raw, invert, meta = _read_dicom(path, keep_identifiers)
    else:
        raw, invert, meta = _read_pillow(path), False, {}
    image = display(raw, path)
    if invert:
        image = 1.0 - image
    return Radiograph(image=image, kind=kind, meta=meta)


def display(raw: np.ndarray, path: Path) -> np.ndarray:
    """Percentile window of a 2-D array to float32 [0, 1]; refuses tiny and blank images."""
    if raw.ndim != 2:
        raise RadiographError(f"{path}: image has shape {raw.shape}, not a single 2-D (rows, columns) image")
    if min(raw.shape) < MIN_SIDE:
        raise RadiographError(f"{path}: image is {raw.shape[0]}x{raw.shape[1]} pixels, too small for a radiograph")
    if not np.isfinite(raw).all():
        raise RadiographError(f"{path}: image holds NaN or infinite values")
    if raw.max() <= raw.min():
        raise RadiographError(f"{path}: every pixel has the same value ({raw.min():g}): a blank image")
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float64))
    return window(x, *WINDOW_PERCENTILES).numpy().astype(np.float32)


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                raise RadiographError(f"{path}: holds {im.n_frames} frames; give a single image")
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "L", "F"):
                return np.asarray(im, dtype=np.float64)
            if im.mode in ("LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
                if np.abs(rgb - rgb[..., :1]).max() > 2.0:  # JPEG chroma noise stays within a couple of levels
                    raise RadiographError(
                        f"{path}: a colour image (its red, green and blue differ); give a grayscale radiograph"
                    )
                return rgb.mean(axis=-1)
            raise RadiographError(f"{path}: unsupported image mode {im.mode!r}; save it as 8- or 16-bit grayscale")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RadiographError(f"{path}: unreadable image ({e}); the file may be truncated or not an image") from None


def _read_dicom(path: Path, keep_identifiers: bool) -> tuple[np.ndarray, bool, dict[str, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in (".dcm", ".dicom", ""))
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise RadiographError(f"{path}: unreadable DICOM ({e}); the file may be truncated or not DICOM") from None
    if not any(tag.group >= 0x0008 for tag in ds.keys()):  # zeros or junk parse as nothing or a lone command element
        raise RadiographError(f"{path}: unreadable DICOM (no data elements); the file is not DICOM or is damaged")
    if "PixelData" not in ds:
        raise RadiographError(f"{path}: a DICOM file without pixel data (e.g. a report or DICOMDIR), not an image")
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise RadiographError(
            f"{path}: DICOM modality {modality} is not a projection radiograph (expected one of "
            f"{', '.join(sorted(RADIOGRAPH_MODALITIES))})"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise RadiographError(
            f"{path}: a multi-frame DICOM ({frames} frames); export the one radiograph as its own file"
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RadiographError(
            f"{path}: a colour DICOM ({photometric}, {samples} samples per pixel); a radiograph is MONOCHROME1 or 2"
        )
    _infer_transfer_syntax(ds)
    try:
        pixels = ds.pixel_array
    except Exception as e:  # decoders raise many types (missing plugin, corrupt stream)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise RadiographError(
            f"{path}: pixel data cannot be decoded ({' '.join(str(e).split())}); transfer syntax {syntax.name if syntax else 'unknown'}"
            " may need a decoder plugin (pylibjpeg, gdcm), or decompress the file first"
        ) from None
    values = apply_modality_lut(pixels, ds)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        values = apply_voi_lut(values, ds, index=0)
    inverse_shape = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    invert = (photometric == "MONOCHROME1") != inverse_shape
    meta: dict[str, Any] = {k: str(ds.get(k)) for k in _DESCRIPTIVE if k in ds}
    meta["voi"] = "VOI LUT" if "VOILUTSequence" in ds else ("window" if has_voi else "none")
    if keep_identifiers:
        meta.update({k: str(ds.get(k)) for k in IDENTIFIERS if k in ds})
    return np.asarray(values, dtype=np.float64), invert, meta


def _infer_transfer_syntax(ds) -> None:
    """Old files (ACR-NEMA style, no preamble or file meta) lack a Transfer Syntax UID, which pydicom
    needs to decode pixels; such files are uncompressed, so take it from the encoding they were read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit is None or little is None:
        implicit, little = True, True
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
