"""Shared fixtures. Tests run on CPU with tiny data; the bundled Omniglot is imported once per session."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Bundled shard sets are imported into a per-session cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("metadist-cache")
    old = os.environ.get("METADIST_CACHE")
    os.environ["METADIST_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("METADIST_CACHE", None)
    else:
        os.environ["METADIST_CACHE"] = old


@pytest.fixture(scope="session")
def small1_uri(_private_cache) -> str:
    from metadist.data import ensure_bundled

    return ensure_bundled("omniglot-small1", progress=False)


@pytest.fixture(scope="session")
def small2_uri(_private_cache) -> str:
    from metadist.data import ensure_bundled

    return ensure_bundled("omniglot-small2", progress=False)


def drawing(seed: int, size: int = 32) -> bytes:
    """A small black-on-white PNG 'drawing' that differs with `seed`."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size), 255, np.uint8)
    for _ in range(3):
        r, c = rng.integers(2, size - 2, 2)
        pixels[r - 1 : r + 2, :] = np.where(rng.random(size) < 0.5, 0, pixels[r, :])
        pixels[:, c] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def make_omniglot_zip(path: Path, top: str, alphabets: dict[str, int], drawings: int = 20, seed: int = 0) -> Path:
    """An Omniglot-layout zip: <top>/<alphabet>/characterNN/<n>.png."""
    with zipfile.ZipFile(path, "w") as archive:
        k = seed
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                for d in range(1, drawings + 1):
                    archive.writestr(f"{top}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png", drawing(k))
                    k += 1
    return path


@pytest.fixture
def tiny_omniglot_zip(tmp_path) -> Path:
    return make_omniglot_zip(tmp_path / "images_background.zip", "images_background", {"Alpha": 3, "Beta": 4})
