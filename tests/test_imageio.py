from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from accessd.imageio import ImageError, decode_image, read_image
from tests.conftest import LFW, SAMPLES


def test_real_jpeg_and_rgba_png_decode_to_rgb() -> None:
    jpg = read_image(SAMPLES / "obama.jpg")
    assert jpg.dtype == np.uint8 and jpg.ndim == 3 and jpg.shape[2] == 3
    png = read_image(SAMPLES / "32bit.png")
    assert png.shape == (1200, 626, 3)


def test_sixteen_bit_and_grayscale(tmp_path: Path) -> None:
    face = cv2.imread(str(next(LFW.glob("George_W_Bush/*.jpg"))))
    p16 = tmp_path / "deep.png"
    cv2.imwrite(str(p16), face.astype(np.uint16) * 257)
    out16 = read_image(p16)
    assert out16.dtype == np.uint8 and np.abs(out16.astype(int) - face[..., ::-1]).max() <= 1
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    assert read_image(gray).shape == (*face.shape[:2], 3)


def test_truncated_zero_byte_and_garbage_name_the_file(tmp_path: Path) -> None:
    data = (SAMPLES / "obama.jpg").read_bytes()
    cases = {"empty.jpg": b"", "garbage.jpg": b"not an image at all", "truncated.jpg": data[:200]}
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ImageError, match=name):
            read_image(path)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height pixels, with a tiny body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return png + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def test_huge_header_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match="bomb.png: .*dimensions exceed"):
        decode_image(png_claiming(20000, 20000), "bomb.png")
    with pytest.raises(ImageError, match="8000x8000 dimensions exceed"):
        decode_image(png_claiming(8000, 8000), "big.png")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="missing.jpg: cannot read"):
        read_image(tmp_path / "missing.jpg")
