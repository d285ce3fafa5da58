"""Image preprocessing, recorded in each shard set's manifest so the sampler never hard-codes it.

Pixels are stored as uint8 [C, H, W]; samplers turn them into float32 in [0, 1] (x / 255).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from metadist.errors import DataImportError

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
MODES = {"L": 1, "RGB": 3}
# Width × height of one image, read from its header before anything is decoded: a guard against decompression bombs
# (a PNG of a few kilobytes that decodes to gigabytes) and against photos far larger than any model input. 25
# megapixels takes a 24-megapixel camera's photo (100 MB decoded as RGB) and is below Pillow's own 89-megapixel
# warning. `metadist predict`, the importers and `metadist serve` (ServeConfig.max_image_pixels) share it.
MAX_IMAGE_PIXELS = 25_000_000
# Pillow warns of images beyond 89 megapixels as it opens them; those are refused here (or let through because a
# server's max_image_pixels asked for them): its warning would only add a second, misleading line to the error.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image file becomes a uint8 [C, H, W] array."""

    mode: str = "L"  # "L" (grey, C=1) or "RGB" (C=3)
    size: tuple[int, int] = (28, 28)  # (H, W) after resizing
    resample: str = "lanczos"  # the MAML reference code resizes Omniglot with LANCZOS
    invert: bool = False  # Omniglot draws black strokes on white; the MAML literature uses strokes = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"preprocessing.mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"preprocessing.resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"preprocessing.size must be (H, W) with positive sides, got {self.size!r}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (MODES[self.mode], self.size[0], self.size[1])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImagePreprocessing":
        return cls(mode=d["mode"], size=tuple(d["size"]), resample=d["resample"], invert=bool(d["invert"]))

    def apply(self, image: Image.Image) -> np.ndarray:
        """PIL image → uint8 [C, H, W]."""
        image = image.convert(self.mode)
        if image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), RESAMPLE[self.resample])
        array = np.asarray(image, dtype=np.uint8)
        if self.invert:
            array = 255 - array
        if array.ndim == 2:
            array = array[None]
        else:
            array = np.ascontiguousarray(array.transpose(2, 0, 1))
        return array

    def decode(self, data: bytes, source: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
        """Encoded image bytes → uint8 [C, H, W]; `source` names the file in errors. An image of more than
        `max_pixels` (by its header) is refused before it is decoded."""
        with open_image(data, source, max_pixels) as image:
            try:
                image.load()
                return self.apply(image)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise DataImportError(f"{source}: not a readable image ({exc})") from exc


def open_image(data: bytes, source: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The image's header, opened lazily (nothing decoded yet); DataImportError naming `source` when it is not an
    image or has more than `max_pixels` pixels (max_image_pixels)."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice its 89 megapixels: not an OSError
        raise DataImportError(f"{source}: too many pixels ({exc}); at most {max_pixels:,} are decoded per image (max_image_pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataImportError(f"{source}: not a readable image ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise DataImportError(
            f"{source}: {width}×{height} pixels; at most {max_pixels:,} are decoded per image (max_image_pixels)"
        )
    return image
