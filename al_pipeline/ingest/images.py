"""Reading image files: validation, normalisation to RGB, perceptual hashes.

Odd but valid images are normalised when they are loaded: EXIF orientation is applied,
and palette, alpha, greyscale, CMYK and 16-bit images become 8-bit RGB.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np
import scipy.fft
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from al_pipeline.store.items import ImageFile

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
_BACKGROUND = (255, 255, 255)


class Reason(StrEnum):
    """Why a file was not registered."""

    EMPTY = "empty"
    NOT_A_FILE = "not_a_file"
    UNREADABLE = "unreadable"
    SYMLINK_LOOP = "symlink_loop"
    OUTSIDE_ROOT = "outside_root"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"


class ImageRejected(Exception):
    """A file that cannot be used as an image, with the reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_image_name(path: Path) -> bool:
    """True when the file name has an image extension (any case) and is not hidden."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB.

    Transparent pixels are composited onto white; 16- and 32-bit greyscale is rescaled
    rather than clipped.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def require_regular_file(path: Path) -> Path:
    """Refuse FIFOs, sockets and devices before opening them: reading a FIFO blocks until
    some other program writes to it."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise ValueError("a folder, not a file")
    if not stat.S_ISREG(mode):
        raise ValueError("not a regular file: a FIFO, socket or device")
    return path


def load_rgb(path: Path) -> Image.Image:
    """Open an image file and return it as normalised RGB (fully loaded)."""
    with Image.open(require_regular_file(path)) as image:
        image.load()
        return to_rgb(image)


def load_checked(path: Path, max_pixels: int) -> Image.Image:
    """:func:`load_rgb` after the checks ingestion applies (format, ``max_pixels``).

    Raises:
        ImageRejected: with the reason, before anything large is decoded.
    """
    try:
        with require_regular_file(path).open("rb") as handle:
            _check_header(handle, max_pixels)
            handle.seek(0)
            return _decode(handle)
    except ValueError as exc:
        raise ImageRejected(Reason.NOT_A_FILE, str(exc)) from exc
    except OSError as exc:
        raise ImageRejected(Reason.UNREADABLE, f"cannot read: {exc.strerror}") from exc


def inspect_file(path: Path, root: Path, max_pixels: int) -> tuple[ImageFile, Image.Image]:
    """Validate one file under ``root`` as an image.

    Returns the file's facts and its normalised RGB image.

    Raises:
        ImageRejected: with the reason the file cannot be used.
    """
    real = _resolve_inside(path, root)
    try:
        facts = real.stat()
    except OSError as exc:
        raise ImageRejected(Reason.UNREADABLE, f"cannot stat: {exc.strerror}") from exc
    if not stat.S_ISREG(facts.st_mode):
        raise ImageRejected(Reason.NOT_A_FILE, "not a regular file")
    if facts.st_size == 0:
        raise ImageRejected(Reason.EMPTY, "file is empty (0 bytes)")
    try:
        with real.open("rb") as handle:
            sha256 = _sha256(handle)
            handle.seek(0)
            image_format = _check_header(handle, max_pixels)
            handle.seek(0)
            rgb = _decode(handle)
    except OSError as exc:
        raise ImageRejected(Reason.UNREADABLE, f"cannot read: {exc.strerror}") from exc
    return (
        ImageFile(sha256, facts.st_size, facts.st_mtime_ns, image_format, rgb.width, rgb.height),
        rgb,
    )


def _sha256(handle: BinaryIO) -> str:
    """The file's content hash, read in 1 MiB chunks: memory stays flat for any size."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The content hash items are known by (raises OSError when the file cannot be read,
    or is a FIFO, socket or device: opening a FIFO blocks until another program writes)."""
    try:
        require_regular_file(path)
    except ValueError as exc:
        raise OSError(errno.EINVAL, str(exc)) from exc
    with path.open("rb") as handle:
        return _sha256(handle)


def _resolve_inside(path: Path, root: Path) -> Path:
    try:
        real = path.resolve(strict=True)
    except RuntimeError as exc:
        raise ImageRejected(Reason.SYMLINK_LOOP, "symbolic link loop") from exc
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise ImageRejected(Reason.SYMLINK_LOOP, "symbolic link loop") from exc
        raise ImageRejected(Reason.UNREADABLE, f"cannot resolve: {exc.strerror}") from exc
    if not real.is_relative_to(root.resolve()):
        raise ImageRejected(Reason.OUTSIDE_ROOT, f"links outside the pool root to {real}")
    return real


def _check_header(handle: BinaryIO, max_pixels: int) -> str:
    try:
        with Image.open(handle) as image:
            image_format = image.format or "unknown"
            width, height = image.size
            if image_format not in ACCEPTED_FORMATS:
                raise ImageRejected(
                    Reason.UNSUPPORTED_FORMAT, f"{image_format} images are not supported"
                )
            if width * height > max_pixels:
                raise ImageRejected(
                    Reason.DECOMPRESSION_BOMB,
                    f"{width}x{height} pixels exceeds the limit of {max_pixels:,}"
                    " (ingest.max_pixels in al.toml)",
                )
            image.verify()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(Reason.DECOMPRESSION_BOMB, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(Reason.NOT_AN_IMAGE, "not an image file Pillow can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _decode_failure(exc) from exc
    return image_format


def _decode(handle: BinaryIO) -> Image.Image:
    try:
        with Image.open(handle) as image:
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _decode_failure(exc) from exc


def _decode_failure(exc: BaseException) -> ImageRejected:
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return ImageRejected(Reason.TRUNCATED, f"truncated image data ({text})")
    return ImageRejected(Reason.CORRUPT, f"corrupt image data ({text})")


def crop_with_margin(
    image: Image.Image, box: tuple[float, float, float, float], margin: float, min_side: int = 2
) -> Image.Image | None:
    """Crop ``box`` (left, top, right, bottom) grown by ``margin`` of its size on each side,
    clamped to the image; ``None`` when the box or the clamped crop is under ``min_side``."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    if width < min_side or height < min_side:
        return None
    region = (
        max(0, round(left - margin * width)),
        max(0, round(top - margin * height)),
        min(image.width, round(right + margin * width)),
        min(image.height, round(bottom + margin * height)),
    )
    if region[2] - region[0] < min_side or region[3] - region[1] < min_side:
        return None
    return image.crop(region)


def file_state(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or None when it cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


# -- near-duplicate hashes ----------------------------------------------------------------

_HASH_SIDE = 112
_CANONICAL_CROP = 0.6
_PROBE_ANGLES = tuple(range(-30, 31, 3))
_PROBE_CROPS = (0.5, 0.6, 0.72)
_BIT_WEIGHTS = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))


def _phash(grey: Image.Image, crop: float) -> int:
    side = grey.size[0]
    margin = side * (1 - crop) / 2
    patch = grey.crop((margin, margin, side - margin, side - margin))
    pixels = np.asarray(patch.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    low = scipy.fft.dctn(pixels, norm="ortho")[:8, :8]
    bits = (low > np.median(low)).ravel().astype(np.uint64)
    return int((bits * _BIT_WEIGHTS).sum())


def near_duplicate_hashes(image: Image.Image) -> tuple[int, NDArray[np.uint64]]:
    """A canonical perceptual hash and the probe hashes of an image's likely copies.

    The canonical hash is a 64-bit DCT hash of the central 60 % of the image. Probes are
    the same hash after mirroring, rotating by up to ±30° and zooming (crops of 50 to 72 %),
    the augmentations typical of copied training images. Two images are near-duplicates
    when a probe of one is within a few bits of the other's canonical hash.
    """
    grey = image.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.LANCZOS)
    canonical = _phash(grey, _CANONICAL_CROP)
    probes = {
        _phash(view.rotate(angle, resample=Image.Resampling.BILINEAR), crop)
        for view in (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        for angle in _PROBE_ANGLES
        for crop in _PROBE_CROPS
    }
    return canonical, np.array(sorted(probes), dtype=np.uint64)
