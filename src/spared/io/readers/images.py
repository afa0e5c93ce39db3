"""Histology images: small PNG/JPG read whole, large full-resolution TIFFs read region by region.

Every image comes out as ``uint8`` RGB ``(H, W, 3)``: alpha is dropped, grayscale is repeated, channel-first
arrays are transposed and 16-bit or float images are rescaled.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from spared.io.readers.common import ReaderError

TIFF_SUFFIXES = (".tif", ".tiff", ".btf")
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".jpg", ".jpeg", ".png")
_CHANNELS = (1, 2, 3, 4)


def _truncated(path: Path, exc: Exception) -> ReaderError:
    return ReaderError(f"could not read image {path} ({type(exc).__name__}: {exc}); the file is truncated or "
                       f"corrupt: delete it and download it again")


def channels_last(array: np.ndarray) -> np.ndarray:
    """Put the channel axis last for ``(C, H, W)`` arrays (``C`` ≤ 4 and ``W`` > 4); other shapes pass through."""
    if array.ndim == 3 and array.shape[0] in _CHANNELS and array.shape[-1] not in _CHANNELS:
        return np.moveaxis(array, 0, -1)
    return array


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Convert an ``(H, W)``, ``(H, W, C)`` array of any common dtype to ``uint8`` RGB ``(H, W, 3)``.

    ``uint16`` is divided by 257, floats in ``[0, 1]`` are scaled by 255 (other floats are clipped to
    ``[0, 255]``), alpha and extra channels are dropped and one or two channels become gray RGB.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in _CHANNELS:
        raise ReaderError(f"expected an image of shape (H, W), (H, W, C) or (C, H, W) with C <= 4, "
                          f"found shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype.kind == "f":
        scale = 255.0 if array.size and np.nanmax(array) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array * scale), 0, 255).round().astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[-1] < 3:
        return np.repeat(array[..., :1], 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


#: What decoding a damaged image raises (tifffile's pure-Python zlib fallback raises ``zlib.error`` when the
#: optional imagecodecs package is absent).
DECODE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, IndexError, RuntimeError, EOFError,
                                                  zlib.error)


def read_image(path: str | Path) -> np.ndarray:
    """Read a whole image file (PNG/JPG/TIFF) as ``uint8`` RGB ``(H, W, 3)``."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"image {path} does not exist")
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            return to_rgb_uint8(channels_last(tifffile.imread(path, level=0)))
        except (*DECODE_ERRORS, tifffile.TiffFileError) as exc:
            raise _truncated(path, exc) from exc
    from PIL import Image

    from spared.io.readers.bigimages import JPEG_SUFFIXES, decode_jpeg, pixel_limit_lifted

    if path.suffix.lower() in JPEG_SUFFIXES:
        return decode_jpeg(path)
    try:
        with pixel_limit_lifted(), Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return to_rgb_uint8(np.asarray(im, dtype=np.uint16 if im.mode.startswith("I;16") else np.int32))
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise _truncated(path, exc) from exc


class FullResImage:
    """A full-resolution image opened for region reads: TIFFs lazily through zarr, other formats decoded once.

    Parameters
    ----------
    path
        TIFF (tiled or striped, pyramidal or not; level 0 is used), JPG or PNG file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ReaderError(f"full-resolution image {self.path} does not exist; place it there or drop "
                              f"'fullres_path' so patches come from the hires image")
        self._array: Any
        self._tiff = None
        self._channel_first = False
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            self._open_tiff()
        else:
            self._array = read_image(self.path)
        shape = self._array.shape
        self.height, self.width = (shape[1], shape[2]) if self._channel_first else (shape[0], shape[1])

    def _open_tiff(self) -> None:
        import tifffile
        import zarr

        try:
            self._tiff = tifffile.TiffFile(self.path)
            series = self._tiff.series[0]
            store = series.aszarr(level=0)
            self._array = zarr.open(store, mode="r")
        except (ValueError, OSError, IndexError, KeyError, tifffile.TiffFileError) as exc:
            self.close()
            raise _truncated(self.path, exc) from exc
        if isinstance(self._array, zarr.Group):
            self._array = self._array["0"]
        shape = self._array.shape
        if len(shape) > 3:
            raise ReaderError(f"{self.path}: expected a 2-D RGB or grayscale image, found shape {shape} "
                              f"(axes {series.axes}); extract the histology plane first")
        self._channel_first = len(shape) == 3 and shape[0] in _CHANNELS and shape[-1] not in _CHANNELS

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return self.height, self.width

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (clipped to the image) as ``uint8`` RGB."""
        y0, x0 = max(y0, 0), max(x0, 0)
        y1, x1 = min(y1, self.height), min(x1, self.width)
        try:
            region = self._array[:, y0:y1, x0:x1] if self._channel_first else self._array[y0:y1, x0:x1]
            region = np.asarray(region)
        except DECODE_ERRORS as exc:
            raise _truncated(self.path, exc) from exc
        return to_rgb_uint8(np.moveaxis(region, 0, -1) if self._channel_first else region)

    def close(self) -> None:
        """Release the file handle (TIFFs)."""
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None

    def __enter__(self) -> FullResImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
