"""Reading real-radiograph files into the display image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.helpers.radiographs import chest_like, write_dicom, write_png
from trainer.predict.radiograph import RadiographError, read_radiograph


@pytest.fixture
def stored():
    return np.round(chest_like(96) * 4095).astype(np.uint16)  # 12-bit stored values


def test_monochrome1_reads_as_its_inverted_monochrome2_twin(tmp_path, stored):
    m2 = read_radiograph(write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2"))
    m1 = read_radiograph(write_dicom(tmp_path / "m1.dcm", 4095 - stored, "MONOCHROME1"))
    np.testing.assert_allclose(m1.image, m2.image, atol=1e-6)
    assert m2.image.dtype == np.float32 and 0.0 <= m2.image.min() and m2.image.max() <= 1.0
    # Bright = dense: the mediastinum (centre column) is brighter than the lungs.
    assert m2.image[:, 48].mean() > m2.image[:, 27].mean() + 0.2


def test_window_twins_and_modality_lut_before_window(tmp_path, stored):
    c, w = 2000.0, 1500.0
    m2 = read_radiograph(write_dicom(tmp_path / "a.dcm", stored, WindowCenter=c, WindowWidth=w))
    # DICOM's linear window is centred on c - 0.5, so the inverted twin's centre is 4095 + 1 - c.
    m1 = read_radiograph(
        write_dicom(tmp_path / "b.dcm", 4095 - stored, "MONOCHROME1", WindowCenter=4096 - c, WindowWidth=w)
    )
    np.testing.assert_allclose(m1.image, m2.image, atol=1e-6)
    assert m2.meta["voi"] == "window"
    # The window clips: more pixels saturate than without it.
    plain = read_radiograph(write_dicom(tmp_path / "c.dcm", stored))
    assert np.mean(m2.image == 1.0) > np.mean(plain.image == 1.0) + 0.01
    # Rescale intercept -1000 with the window in rescaled units equals signed stored values already shifted.
    shifted = stored.astype(np.int32) - 1000
    r = read_radiograph(
        write_dicom(
            tmp_path / "d.dcm", stored, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=c - 1000, WindowWidth=w
        )
    )
    s = read_radiograph(
        write_dicom(tmp_path / "e.dcm", shifted, signed=True, bits_stored=16, WindowCenter=c - 1000, WindowWidth=w)
    )
    np.testing.assert_allclose(r.image, s.image, atol=1e-6)
    np.testing.assert_allclose(r.image, m2.image, atol=1e-6)


def test_presentation_lut_inverse_flips_monochrome2(tmp_path, stored):
    a = read_radiograph(write_dicom(tmp_path / "a.dcm", stored))
    b = read_radiograph(write_dicom(tmp_path / "b.dcm", 4095 - stored, PresentationLUTShape="INVERSE"))
    np.testing.assert_allclose(a.image, b.image, atol=1e-6)


def test_identifiers_only_on_request(tmp_path, stored):
    path = write_dicom(tmp_path / "a.dcm", stored)
    meta = read_radiograph(path).meta
    assert "MRN-123456" not in str(meta) and "Doe" not in str(meta) and meta["Modality"] == "DX"
    kept = read_radiograph(path, keep_identifiers=True).meta
    assert kept["PatientID"] == "MRN-123456" and kept["AccessionNumber"] == "ACC-42"


def test_png_8_and_16_bit_read_alike(tmp_path):
    img = chest_like(96)
    a = read_radiograph(write_png(tmp_path / "a.png", img, 8))
    b = read_radiograph(write_png(tmp_path / "b.png", img, 16))
    assert a.kind == b.kind == "png"
    assert np.abs(a.image - b.image).max() < 2.5 / 255
    # A gray image saved as RGB JPEG reads as gray.
    Image.fromarray(np.round(img * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "c.jpg", quality=95)
    c = read_radiograph(tmp_path / "c.jpg")
    assert c.kind == "jpeg" and np.abs(c.image - a.image).mean() < 0.02


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d, s: write_dicom(d / "mf.dcm", s, frames=3), "multi-frame DICOM"),
        (lambda d, s: write_dicom(d / "ct.dcm", s, modality="CT"), "modality CT is not a projection radiograph"),
        (lambda d, s: write_dicom(d / "blank.dcm", np.zeros_like(s)), "blank image"),
        (lambda d, s: write_dicom(d / "tiny.dcm", s[:8, :8]), "too small"),
        (lambda d, s: (d / "notes.txt").write_text("hello") and d / "notes.txt", "not a DICOM, PNG or JPEG"),
        (
            lambda d, s: (d / "junk.dcm").write_bytes(b"\x00" * 50) and d / "junk.dcm",
            "unreadable DICOM \\(no data elements\\)",
        ),
        (lambda d, s: _truncated_png(d), "unreadable image"),
        (lambda d, s: _colour_png(d), "colour image"),
    ],
)
def test_bad_inputs_are_clear_errors(tmp_path, stored, make, message):
    path = make(tmp_path, stored)
    with pytest.raises(RadiographError, match=message) as err:
        read_radiograph(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _truncated_png(d):
    p = write_png(d / "t.png", chest_like(96), 8)
    p.write_bytes(p.read_bytes()[:200])
    return p


def _colour_png(d):
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = np.arange(64)[None, :]
    Image.fromarray(rgb).save(d / "colour.png")
    return d / "colour.png"


def test_old_dicom_without_preamble_or_file_meta(tmp_path, stored):
    """ACR-NEMA style files (no preamble, no Transfer Syntax UID, often no suffix) still read."""
    import pydicom

    ref = write_dicom(tmp_path / "ref.dcm", stored, "MONOCHROME1")
    ds = pydicom.dcmread(ref)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(tmp_path / "OLDFILE", implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (tmp_path / "OLDFILE").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_radiograph(tmp_path / "OLDFILE").image, read_radiograph(ref).image)


def test_compressed_dicom_without_decoder_is_one_clear_line(tmp_path, stored, monkeypatch):
    from pydicom.dataset import Dataset

    path = write_dicom(tmp_path / "a.dcm", stored)

    def no_decoder(self):
        raise RuntimeError("Unable to decompress 'JPEG Lossless' pixel data because all plugins are missing:\n\tgdcm")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(RadiographError, match="cannot be decoded .* decoder plugin") as err:
        read_radiograph(path)
    assert "\n" not in str(err.value)
