"""Very large H&E images (legacy ST JPEGs of ~90 megapixels, HEST pyramidal TIFFs): size from the header, a
decode that holds one copy, and thumbnails that never decode the full resolution when the format allows it.

PIL refuses or warns about images above ``Image.MAX_IMAGE_PIXELS`` (a decompression-bomb guard for untrusted
files). The files read here come from catalogue downloads, so the limit is lifted only while they are opened
(:func:`pixel_limit_lifted`); the global setting is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from spared.io.readers.common import ReaderError

JPEG_SUFFIXES = (".jpg", ".jpeg")
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf")


def _unreadable(path: Path, exc: BaseException) -> ReaderError:
    return ReaderError(f"could not read image {path} ({type(exc).__name__}: {exc}); the file is truncated or "
                       f"corrupt: delete it and download it again")


@contextlib.contextmanager
def pixel_limit_lifted() -> Iterator[None]:
    """Open images of any size inside this block; PIL's decompression-bomb limit is restored on exit."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image in pixels, read from its header (TIFF: level 0) without decoding it."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"image {path} does not exist")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes, shape = series.axes, series.shape
            return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
        from PIL import Image

        with pixel_limit_lifted(), Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, ValueError, IndexError, SyntaxError) as exc:
        raise _unreadable(path, exc) from exc


def decode_jpeg(path: str | Path) -> np.ndarray:
    """A JPEG as C-contiguous ``uint8`` RGB ``(H, W, 3)``, holding a single decoded copy in memory.

    libjpeg-turbo (through simplejpeg) decodes straight into the returned array: a 92-megapixel her2st image
    peaks at one copy (≈ 280 MB) where PIL holds its own padded copy besides the array. PIL is the fallback for
    JPEGs simplejpeg cannot decode (e.g. 12-bit or arithmetic-coded).
    """
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"image {path} does not exist")
    import simplejpeg

    data = path.read_bytes()
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        pass
    from PIL import Image

    try:
        with pixel_limit_lifted(), Image.open(path) as im:
            im.load()
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def thumbnail(path: str | Path, max_side: int = 2000) -> tuple[np.ndarray, float]:
    """A downscaled ``uint8`` RGB copy of an image whose longer side is at most ``max_side`` pixels.

    JPEGs are decoded at 1/2, 1/4 or 1/8 scale by the codec itself (draft mode) and pyramidal TIFFs are read
    from the smallest level that is still large enough, so a 90-megapixel image costs a fraction of a full
    decode.

    Returns
    -------
    The thumbnail and its scale factor (thumbnail pixels per full-resolution pixel, as Visium's
    ``tissue_hires_scalef``).
    """
    from PIL import Image

    path = Path(path)
    width, height = image_size(path)
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            small = Image.fromarray(_smallest_tiff_level(path, max(size)))
        else:
            with pixel_limit_lifted(), Image.open(path) as im:
                im.draft("RGB", size)
                small = im.convert("RGB")
                small.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(path, exc) from exc
    if small.size != size:
        small = small.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(small), size[0] / width


def _smallest_tiff_level(path: Path, min_side: int) -> np.ndarray:
    """The smallest pyramid level of a TIFF whose longer side is ≥ ``min_side`` (level 0 when none is), read
    with a stride when it is still more than twice that size, so a plain (one-level) TIFF is never held whole."""
    import tifffile
    import zarr

    from spared.io.readers.images import channels_last, to_rgb_uint8

    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        chosen = 0
        for i, level in enumerate(levels[1:], start=1):
            if max(level.shape[level.axes.index("X")], level.shape[level.axes.index("Y")]) >= min_side:
                chosen = i
        level = levels[chosen]
        side = max(level.shape[level.axes.index("X")], level.shape[level.axes.index("Y")])
        step = max(1, side // (2 * min_side))
        if step == 1:
            return to_rgb_uint8(channels_last(level.asarray()))
        array = zarr.open(tif.series[0].aszarr(level=chosen), mode="r")
        if isinstance(array, zarr.Group):
            array = array["0"]
        y, x = level.axes.index("Y"), level.axes.index("X")
        index = tuple(slice(None, None, step) if axis in (y, x) else slice(None) for axis in range(array.ndim))
        return to_rgb_uint8(channels_last(np.asarray(array[index])))
