"""Opening image files safely: a pixel limit for every header, and honest colours.

- :func:`max_image_pixels` -- the largest image (height x width) tabst opens: 1.6e9 px by
  default (a 40k x 40k whole-slide image read by region), ``TABST_MAX_IMAGE_PIXELS`` to change
  it (``none`` switches the limit off). :func:`check_pixel_limit` refuses a header beyond it
  before anything is decoded.
- :func:`open_pil` -- ``PIL.Image.open`` under that limit (Pillow's own decompression-bomb guard
  stays on for everyone else: its global is set only while opening, and restored).
- :func:`tiff_colour` / :func:`to_rgb_colour` -- what a TIFF's photometric tag says about its
  samples (RGB, grey, white-is-zero grey, palette, CMYK), so CMYK is converted to RGB like
  Pillow's ``convert("RGB")`` instead of dropping K, and unsupported colour spaces are refused.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputError, TabstError

#: default pixel limit: a 40,000 x 40,000 px slide
DEFAULT_MAX_IMAGE_PIXELS = 1_600_000_000
MAX_PIXELS_ENV = "TABST_MAX_IMAGE_PIXELS"
_PIL_LOCK = threading.Lock()


def max_image_pixels() -> int | None:
    """The pixel limit (height x width) for any image tabst opens; None when switched off.

    Read from the environment variable ``TABST_MAX_IMAGE_PIXELS`` (an integer such as
    ``2000000000`` or ``2e9``; ``none`` or ``0`` switches the limit off), else
    :data:`DEFAULT_MAX_IMAGE_PIXELS`.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    if raw.lower() in ("none", "off", "0"):
        return None
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not math.isfinite(v) or v < 1:
        raise TabstError(f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count. Set it to a number of "
                         "pixels such as 2e9, or to 'none' to switch the limit off.")
    return int(v)


def check_pixel_limit(height: int, width: int, *, path, what: str = "image") -> None:
    """Refuse an image whose header claims more pixels than :func:`max_image_pixels`.

    Parameters
    ----------
    height, width : int
        Size from the header (nothing decoded yet).
    path : path-like
        The image file (named in the message).
    what : str
        What the image is, for the message.
    """
    limit = max_image_pixels()
    n = int(height) * int(width)
    if limit is not None and n > limit:
        raise InputError(
            f"the {what} header claims {int(width):,} x {int(height):,} = {n:,} pixels, more than "
            f"the limit of {limit:,} (a guard against decompression bombs and corrupt headers)",
            file=path,
            fix=f"if the image is genuine, raise the limit, e.g. {MAX_PIXELS_ENV}={n} (or 'none'); "
                "huge slides are best stored as tiled (pyramidal) TIFF, which is read by region")


@contextmanager
def open_pil(path, *, what: str = "image"):
    """``PIL.Image.open(path)`` (lazy: header only) under tabst's pixel limit.

    Yields the opened image and closes it afterwards. Pillow's global ``MAX_IMAGE_PIXELS`` is
    set to tabst's limit only while the header is read, then restored, and the size is
    checked with :func:`check_pixel_limit`, so decoding (``np.asarray(im)``) happens only for
    images within the limit. Raises :class:`InputError` for headers beyond it; other errors
    (corrupt files) pass through to the caller.
    """
    from PIL import Image

    limit = max_image_pixels()
    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
        except Image.DecompressionBombError:
            # Pillow refuses at twice the limit; the header still gives the size in its text
            raise InputError(f"the {what} header claims more than twice the limit of "
                             f"{limit:,} pixels", file=path,
                             fix=f"if the image is genuine, raise the limit with "
                                 f"{MAX_PIXELS_ENV}=<pixels> (or 'none')") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old
    try:
        w, h = im.size
        check_pixel_limit(h, w, path=path, what=what)
        yield im
    finally:
        im.close()


# ----------------------------------------------------------------------------------------------
# TIFF colour
# ----------------------------------------------------------------------------------------------

def tiff_colour(page, *, path, what: str = "image", samples: int | None = None) -> str:
    """How to turn a TIFF page's samples into RGB, from its photometric tag.

    Returns ``"rgb"`` (RGB, grey, or YCbCr that tifffile decodes to RGB), ``"miniswhite"``
    (grey with 0 = white), ``"palette"`` (indices into the colormap) or ``"cmyk"`` (separated
    with the CMYK ink set). Anything else (CIELAB, non-CMYK ink sets, ...) raises
    :class:`InputError` asking for an RGB export.
    """
    import tifffile

    P = tifffile.PHOTOMETRIC
    ph = getattr(page, "photometric", None)
    if ph in (P.RGB, P.MINISBLACK, None):
        return "rgb"
    if ph == P.MINISWHITE:
        return "miniswhite"
    if ph == P.PALETTE:
        return "palette"
    if ph == P.YCBCR and int(getattr(page, "compression", 1)) in (6, 7):  # JPEG: decoded to RGB
        return "rgb"
    if ph == P.SEPARATED:
        tag = page.tags.get("InkSet") if hasattr(page, "tags") else None
        inkset = int(tag.value) if tag is not None else 1  # 1 = CMYK (the TIFF default)
        n = samples if samples is not None else int(getattr(page, "samplesperpixel", 4))
        if inkset == 1 and n >= 4:
            return "cmyk"
    name = getattr(ph, "name", str(ph))
    raise InputError(f"the {what} is a TIFF in the {name} colour space, which tabst cannot read "
                     "as RGB", file=path,
                     fix="export it as an RGB (or greyscale) TIFF/PNG, e.g. with Pillow: "
                         "Image.open(f).convert('RGB').save('rgb.tif')")


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.integer):
        scale = 255.0 / float(np.iinfo(a.dtype).max)
        return np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    f = np.nan_to_num(a.astype(np.float64))
    if f.size and f.max() <= 1.0:
        f = f * 255.0
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def cmyk_to_rgb(a: np.ndarray) -> np.ndarray:
    """``[h, w, >=4]`` CMYK(+extra) samples -> ``uint8 [h, w, 3]`` RGB, the same arithmetic as
    Pillow's ``Image.convert("RGB")`` for mode ``CMYK``: R = (255 - K) - C (255 - K) / 255."""
    a = _to_uint8(np.asarray(a)).astype(np.int32)
    nk = 255 - a[:, :, 3:4]
    t = a[:, :, :3] * nk + 128
    return np.clip(nk - ((t + (t >> 8)) >> 8), 0, 255).astype(np.uint8)


def to_rgb_colour(win: np.ndarray, colour: str, colormap=None) -> np.ndarray:
    """Apply a :func:`tiff_colour` interpretation to a window ``[h, w, c]``; returns an array
    that :func:`tabst.images.to_uint8_rgb` turns into RGB correctly."""
    if colour == "rgb":
        return win
    if colour == "cmyk":
        return cmyk_to_rgb(win)
    if colour == "miniswhite":
        if win.dtype == bool:
            return ~win
        if np.issubdtype(win.dtype, np.integer):
            return (np.iinfo(win.dtype).max - win).astype(win.dtype)
        f = win.astype(np.float64)
        return (1.0 if f.size and np.nanmax(f) <= 1.0 else 255.0) - f
    if colour == "palette":
        cmap = np.asarray(colormap)
        if cmap.ndim != 2 or cmap.shape[0] != 3:
            raise ValueError("a palette TIFF needs a (3, N) colormap")
        idx = np.clip(win[:, :, 0].astype(np.int64), 0, cmap.shape[1] - 1)
        rgb = np.moveaxis(cmap[:, idx], 0, -1)
        return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else _to_uint8(rgb)
    raise ValueError(f"unknown colour interpretation {colour!r}")


def tiff_header(path, *, what: str = "image") -> dict:
    """Size, samples, dtype and colour of a TIFF's first series (tags only, nothing decoded);
    checks the pixel limit."""
    import tifffile

    path = Path(path)
    with tifffile.TiffFile(path) as tf:
        s = tf.series[0] if tf.series else tf.pages[0]
        shape, axes, dt = tuple(s.shape), getattr(s, "axes", ""), str(s.dtype)
        page = s.keyframe if hasattr(s, "keyframe") else tf.pages[0]
        if "Y" in axes and "X" in axes:
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            ch = shape[axes.index("S")] if "S" in axes else (
                shape[axes.index("C")] if "C" in axes else 1)
        else:
            h, w = shape[0], shape[1]
            ch = shape[2] if len(shape) > 2 else 1
        check_pixel_limit(h, w, path=path, what=what)
        colour = tiff_colour(page, path=path, what=what, samples=int(ch))
        colormap = page.colormap if colour == "palette" else None
    return {"height": int(h), "width": int(w), "channels": int(ch), "dtype": dt, "axes": axes,
            "colour": colour, "colormap": colormap}
