"""Image decoding for the datasets: any Pillow-readable file -> [H, W, 3] uint8 RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Grayscale modes whose values span 16 bits (Pillow opens 16-bit PNG/TIFF grayscale as one of these)
_WIDE_GRAY = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode ``path`` to [H, W, 3] uint8 RGB on the stored pixel grid.

    EXIF orientation is ignored on purpose: COCO's ``width``/``height`` and every box and polygon
    refer to the pixel grid as stored in the file, which is what the file decodes to; rotating the
    image would misplace all its annotations.

    The array is writable. Modes: RGB is returned as decoded. L, 1, P (with or without
    transparency), LA, RGBA, CMYK and the other 8-bit modes go through Pillow's conversion (alpha
    is dropped, not composited; F is clipped to 0..255). 16-bit grayscale (``I;16*``, ``I``) is
    clipped to 0..65535 and scaled to 0..255 (x * 255 / 65535, rounded).

    Raises ``OSError`` with one line naming the file when it is unreadable, truncated or not an
    image.
    """
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, inside the try
            if im.mode == "RGB":
                return np.array(im)  # writable; the copy is lost in decoding's noise (np.asarray: read-only)
            if im.mode in _WIDE_GRAY:
                wide = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
                gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split("\n"))
        raise OSError(f"cannot read image {path}: {reason}; the file is corrupt or not an image") from err
