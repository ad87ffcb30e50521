"""Image decoding: any file Pillow reads -> ``uint8`` ``HxWx3`` RGB array, with every odd input handled on purpose.

Conversions (each one is deliberate and tested):

- ``RGB``: unchanged. ``L`` (grayscale) and ``1`` (bilevel, 0/255): replicated to three channels.
- ``P`` (palette): expanded through the palette. ``CMYK`` (e.g. CMYK JPEGs, Adobe-inverted ones included):
  Pillow's plain CMYK -> RGB conversion, no ICC colour management. ``YCbCr``, ``HSV``, ``RGBX`` ...: Pillow's
  ``convert("RGB")``.
- Transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, and ``P``/``L``/``RGB`` images with a
  ``transparency`` entry such as a PNG ``tRNS`` chunk): **composited onto white**,
  ``out = round((c * a + 255 * (255 - a)) / 255)``. Simply dropping alpha would expose whatever colour happens to
  sit under transparent pixels (often black), which is not what a viewer shows.
- 16-bit data (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; and mode ``I`` read from a PNG, which is how older Pillow
  versions open 16-bit grayscale PNGs): scaled to 8 bits by ``value >> 8`` (the high byte), never clipped at 255.
  16-bit RGB(A) PNGs are already reduced to their high byte by Pillow when they are opened.
- Mode ``I`` (32-bit signed integer, e.g. integer TIFFs) from anything else: the bit depth is taken from the TIFF
  ``BitsPerSample`` tag when it says 8 or 16; otherwise from the value range -- maximum <= 255: 8-bit data, kept;
  <= 65535: 16-bit data, ``>> 8``; larger: 32-bit data, ``>> 24``. Negative values are clamped to 0.
- Mode ``F`` (32-bit float, e.g. float TIFFs): NaN -> 0; if every finite value is <= 1.0 the data is read as
  [0, 1] and scaled by 255; otherwise it is read as [0, 255]. Values are clamped to that range and rounded
  half up.
- Multi-frame files (animated PNG, GIF, WebP, multi-page TIFF): the first frame.
- EXIF orientation is **not** applied, and embedded ICC profiles are ignored: the ImageNet evaluation protocols
  (ADM's loader, torchvision's ImageFolder) read raw pixel order, and published numbers depend on that.
- The format is read from the content, never from the extension: a JPEG named ``.png`` is decoded as the JPEG it
  is; a file that is no image at all (an HTML error page named ``.png``) is an unreadable sample. Empty files are
  reported as empty.

Size guard: images with more than ``max_pixels`` pixels are refused before decoding with
:class:`ImageTooLargeError`, as are metadata chunks that inflate past Pillow's text-chunk limit; nothing is
allocated at the declared size. ``max_pixels`` comes from the argument, else the ``VTBENCH_MAX_PIXELS`` environment
variable, else :data:`DEFAULT_MAX_PIXELS`. Pillow's own ``DecompressionBombError`` is translated into the same
error. Corrupt, truncated and non-image inputs raise :class:`ImageLoadError` naming the file, the problem and the
fix.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENV_MAX_PIXELS",
    "ImageLoadError",
    "ImageTooLargeError",
    "load_image",
    "image_size",
    "load_image_bytes",
    "resolve_max_pixels",
    "to_rgb_array",
]

DEFAULT_MAX_PIXELS = 150_000_000
ENV_MAX_PIXELS = "VTBENCH_MAX_PIXELS"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# Image.MAX_IMAGE_PIXELS is process-global; it is swapped for our limit only while a file header is parsed.
_open_lock = threading.Lock()


class ImageLoadError(ValueError):
    """An image that cannot be read. ``str(err)`` names the file, what is wrong and the fix."""

    default_fix = ("check the file (re-download or re-export it), or remove it from the dataset; "
                   "vtbench records and skips unreadable samples during a run")

    def __init__(self, path: str | os.PathLike, reason: str, fix: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.fix = fix or self.default_fix
        super().__init__(f"cannot load image {self.path!r}: {self.reason}. Fix: {self.fix}")

    def __reduce__(self):  # keep the three fields across processes (DataLoader workers)
        return (type(self), (self.path, self.reason, self.fix))


class ImageTooLargeError(ImageLoadError):
    """An image with more pixels than the configured ``max_pixels``."""


def resolve_max_pixels(max_pixels: int | float | None = None) -> int:
    """The pixel limit in force: the argument, else ``$VTBENCH_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    source = "max_pixels"
    if max_pixels is None:
        env = os.environ.get(ENV_MAX_PIXELS, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        source = ENV_MAX_PIXELS
        try:
            max_pixels = float(env)
        except ValueError:
            raise ValueError(f"{ENV_MAX_PIXELS}={env!r} is not a number; set it to a pixel count such as 2e8, "
                             f"or unset it for the default {DEFAULT_MAX_PIXELS:.3g}") from None
    if not max_pixels > 0 or max_pixels != max_pixels:  # also refuses NaN
        raise ValueError(f"{source} must be a positive pixel count, got {max_pixels!r}")
    return int(max_pixels)


def _too_large(name: str, width: int | None, height: int | None, limit: int,
               pixels: int | None = None) -> ImageTooLargeError:
    if width and height:
        what = f"{width}x{height} = {width * height:.3g} pixels exceeds the limit max_pixels={limit:.3g}"
        need = width * height
    elif pixels:
        what = f"{pixels:.3g} pixels exceeds the limit max_pixels={limit:.3g} (a decompression-bomb guard)"
        need = pixels
    else:
        what = f"the image exceeds the limit max_pixels={limit:.3g} (a decompression-bomb guard)"
        need = 2 * limit
    fix = (f"if the file is trusted, raise the limit: pass max_pixels={need} (e.g. load_image(..., max_pixels=...) "
           f"or open_dataset(..., max_pixels=...)) or set the environment variable {ENV_MAX_PIXELS}={need}")
    return ImageTooLargeError(name, what, fix)


def _open(fp, name: str, limit: int) -> Image.Image:
    """Open (header only) under our pixel limit; translate Pillow's errors."""
    with _open_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fp)
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            raise _too_large(name, None, None, limit, int(found.group(1)) if found else None) from None
        except Image.UnidentifiedImageError:
            if _head(fp).startswith(b"version https://git-lfs"):
                raise ImageLoadError(name, "a Git LFS pointer (a small text file), not the image itself",
                                     "fetch the real files (`git lfs pull` in the dataset's repository) or "
                                     "re-download the dataset") from None
            raise ImageLoadError(name, "not an image, or an image format Pillow cannot identify",
                                 "check that the file really is an image (PNG, JPEG, BMP, WebP, TIFF, ...) "
                                 "and not an HTML error page, an LFS pointer or a partial download; "
                                 "re-download it or remove it from the dataset") from None
        except ValueError as exc:
            if "Decompressed" in str(exc):  # Pillow's guard on zTXt/iTXt/iCCP chunks that inflate too far
                raise ImageTooLargeError(name, f"a compressed metadata chunk inflates past Pillow's limit, a "
                                               f"decompression bomb ({exc})",
                                         "if the file is trusted, re-save the image without its oversized "
                                         "metadata (e.g. open and save it with another tool)") from None
            raise ImageLoadError(name, f"unreadable image header ({type(exc).__name__}: {exc})") from None
        except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
            raise ImageLoadError(name, f"unreadable image header ({type(exc).__name__}: {exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = img.size
    if width * height > limit:
        img.close()
        raise _too_large(name, width, height, limit)
    return img


def _head(fp, n: int = 64) -> bytes:
    """The first ``n`` bytes of an open file (for naming what a non-image is)."""
    try:
        fp.seek(0)
        return fp.read(n)
    except Exception:  # noqa: BLE001 - unseekable: nothing to tell
        return b""


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255  # integer round-half-up of the float blend
    return out.astype(np.uint8)


def _gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def _int_bits(img: Image.Image, a: np.ndarray) -> int:
    """Bit depth of a mode-``I`` image (see the module docstring)."""
    if img.format == "PNG":
        return 16
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        bps = tags.get(258)
        if isinstance(bps, tuple):
            bps = bps[0] if bps else None
        if bps in (8, 16):
            return int(bps)
    top = int(a.max()) if a.size else 0
    return 8 if top <= 255 else 16 if top <= 65535 else 32


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a (loaded) PIL image of any mode to ``uint8`` ``HxWx3`` RGB, as described in the module doc."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(img).astype(np.uint32)
        return _gray3((a >> 8).astype(np.uint8))
    if mode == "I":
        a = np.asarray(img).astype(np.int64)
        a = np.clip(a, 0, None)
        bits = _int_bits(img, a)
        shift = {8: 0, 16: 8, 32: 24}[bits]
        a = np.clip(a >> shift, 0, 255)
        return _gray3(a.astype(np.uint8))
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=np.inf, neginf=-np.inf)
        finite = a[np.isfinite(a)]
        unit = finite.size == 0 or float(finite.max()) <= 1.0
        a = np.clip(a, 0.0, 1.0) * 255.0 if unit else np.clip(a, 0.0, 255.0)
        return _gray3(np.floor(a + 0.5).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite_on_white(np.asarray(img.convert("RGBA")))
    if mode == "RGB":
        return np.asarray(img)
    if mode == "L":
        return _gray3(np.asarray(img))
    if mode == "1":
        return _gray3(np.asarray(img.convert("L")))
    # P without transparency, CMYK, YCbCr, HSV, RGBX, LAB ... -> Pillow's conversion
    return np.asarray(img.convert("RGB"))


def _decode(fp, name: str, max_pixels: int | float | None) -> np.ndarray:
    limit = resolve_max_pixels(max_pixels)
    img = _open(fp, name, limit)
    try:
        try:
            img.load()
        except Image.DecompressionBombError:
            raise _too_large(name, *img.size, limit) from None
        except Exception as exc:  # noqa: BLE001 - truncated data, bad CRC, broken zlib stream ...
            detail = str(exc) or type(exc).__name__
            if "truncated" in detail.lower() or isinstance(exc, EOFError):
                reason = f"the file is truncated or incomplete ({detail})"
            else:
                reason = f"corrupt image data ({type(exc).__name__}: {detail})"
            raise ImageLoadError(name, reason,
                                 "re-download or re-export the file (a partial copy is the usual cause), "
                                 "or remove it from the dataset; vtbench records and skips unreadable samples "
                                 "during a run") from None
        try:
            arr = to_rgb_array(img)
        except Exception as exc:  # noqa: BLE001 - e.g. a colour mode Pillow cannot convert to RGB
            raise ImageLoadError(name, f"unsupported image mode {img.mode!r} ({type(exc).__name__}: {exc})",
                                 "convert the image to RGB (e.g. PNG or JPEG) first") from None
    finally:
        img.close()
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or 0 in arr.shape:
        raise ImageLoadError(name, f"decoded to an unexpected array {arr.dtype} {arr.shape}",
                             "convert the image to 8-bit RGB first")
    return np.ascontiguousarray(arr)


def load_image(path: str | os.PathLike, max_pixels: int | float | None = None) -> np.ndarray:
    """Read an image file as a ``uint8`` ``HxWx3`` RGB array (see the module docstring for the conversions).

    Raises :class:`ImageLoadError` (or its subclass :class:`ImageTooLargeError`) for unreadable files.
    """
    path = Path(path)
    name = str(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise ImageLoadError(name, "no such file", "check the path; the dataset listing may be stale") from None
    except IsADirectoryError:
        raise ImageLoadError(name, "is a directory, not an image file", "pass an image file") from None
    except OSError as exc:
        raise ImageLoadError(name, f"cannot read the file ({exc.strerror or exc})",
                             "check the file's permissions and the storage it lives on") from None
    with fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ImageLoadError(name, "the file is empty (0 bytes)",
                                 "re-download or re-export it (an interrupted copy leaves empty files), or remove it "
                                 "from the dataset; vtbench records and skips unreadable samples during a run")
        return _decode(fh, name, max_pixels)


def image_size(source: str | os.PathLike | bytes, name: str | None = None,
               max_pixels: int | float | None = None) -> tuple[int, int]:
    """``(width, height)`` from the header alone (a path or encoded bytes); nothing is decoded. Raises
    :class:`ImageLoadError` like :func:`load_image`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(name or "<bytes>", "empty image data (no bytes stored)")
        img = _open(io.BytesIO(bytes(source)), name or "<bytes>", resolve_max_pixels(max_pixels))
    else:
        try:
            img = _open(open(source, "rb"), name or str(source), resolve_max_pixels(max_pixels))
        except OSError as exc:
            raise ImageLoadError(name or str(source), f"cannot read the file ({exc.strerror or exc})") from None
    try:
        return img.size
    finally:
        img.close()


def load_image_bytes(data: bytes | bytearray | memoryview, name: str,
                     max_pixels: int | float | None = None) -> np.ndarray:
    """Decode an in-memory encoded image (e.g. a parquet cell); ``name`` is used in error messages."""
    if data is None or len(data) == 0:
        raise ImageLoadError(name, "empty image data (no bytes stored)",
                             "check the dataset row; the image was probably not written")
    return _decode(io.BytesIO(bytes(data)), name, max_pixels)
