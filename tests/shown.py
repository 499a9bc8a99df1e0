"""Helpers for tests that check what a report or table shows against the data it came from."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def shows(cell: str, value: float | None) -> bool:
    """Whether a printed cell ("82.7%", "0.108", ">= 64.74", "-") is `value` rounded as shown."""
    cell = cell.strip().removeprefix(">=").strip().replace(",", "")
    if value is None:
        return cell in ("-", "None", "")
    scale = 1.0
    if cell.endswith("%"):
        cell, scale = cell[:-1], 100.0
    decimals = len(cell.split(".", 1)[1]) if "." in cell else 0
    return abs(float(cell) - value * scale) <= 0.5 * 10.0**-decimals + 1e-9


def decode_png(path: Path) -> np.ndarray:
    """Decode a PNG fully; check the pixels decoded are the size its header states."""
    import matplotlib.image

    raw = Path(path).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", raw[16:24])
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (height, width), (path, img.shape, width, height)
    assert height >= 200 and width >= 200, (path, width, height)
    # a drawn figure, not a blank canvas: several distinct colours and real contrast
    rgb = (img[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) >= 8 and float(img[..., :3].std()) > 0.05, path
    return img
