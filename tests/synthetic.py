"""Synthetic inputs shared by the tests: small PNG drawings and Omniglot-layout zip archives."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def drawing(seed: int, size: int = 16) -> bytes:
    """A small black-on-white PNG 'drawing' that differs with `seed`."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size), 255, np.uint8)
    for _ in range(3):
        r, c = rng.integers(1, size - 1, 2)
        pixels[r, :] = 0
        pixels[:, c] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_omniglot_zip(path: Path, top: str, alphabets: dict[str, int], drawings: int = 20, seed: int = 0) -> Path:
    """An Omniglot-layout zip: <top>/<alphabet>/characterNN/<n>.png, every drawing different."""
    k = seed
    with zipfile.ZipFile(path, "w") as archive:
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                for d in range(1, drawings + 1):
                    archive.writestr(f"{top}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png", drawing(k))
                    k += 1
    return path
