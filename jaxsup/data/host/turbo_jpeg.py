"""Window decode of JPEG bytes through libjpeg-turbo 3's TurboJPEG API (ctypes; optional `[jpeg]` extra).

Only the rows and columns of a window are decoded (tj3SetCroppingRegion), at a DCT scale 1/s
(tj3SetScalingFactor), which Pillow cannot do (its draft mode only scales the whole image).

The library: the `turbojpeg` wheel (`pip install 'jaxsup[jpeg]'`) ships libturbojpeg 3 as a
shared object, used here through its C API; a system libturbojpeg with the tj3 functions
(libjpeg-turbo >= 3.0) is used otherwise. Without either, or with JAXSUP_JPEG=pillow in the
environment, `available()` is False and jaxsup/data/host/image_ops.py decodes with Pillow.

Everything here answers None where the caller should take the Pillow path instead: not a
JPEG, CMYK/YCCK, 12-bit, lossless, progressive, unusual subsampling, no EOI marker at the end
(truncated, or trailing bytes), or any libjpeg error or warning (a corrupt file then ends in
Pillow's error or image, exactly as without this module).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import os
import math
import threading
from typing import NamedTuple

import numpy as np
from PIL import Image

INIT_DECOMPRESS = 1
PARAM = {"subsamp": 4, "width": 5, "height": 6, "precision": 7, "colorspace": 8, "progressive": 12, "lossless": 15}
CS_CMYK, CS_YCCK = 3, 4
PF_RGB, PF_GRAY = 0, 6
MCU_WIDTH = (8, 16, 16, 8, 8, 32, 8)  # tjMCUWidth per TJSAMP_444, 422, 420, GRAY, 440, 411, 441
SCALES = (8, 4, 2, 1)  # the DCT scales 1/s that Pillow's draft mode uses (same choice here)


class ScalingFactor(ctypes.Structure):
    _fields_ = [("num", ctypes.c_int), ("denom", ctypes.c_int)]


class Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


class Header(NamedTuple):
    """What the window decode needs from a JPEG header."""

    width: int
    height: int
    subsamp: int  # TJSAMP_*; index into MCU_WIDTH


def library_candidates() -> list[str]:
    """Paths to try, best first: the `turbojpeg` wheel's bundled libturbojpeg, then the system's."""
    paths = []
    try:
        dist = importlib.metadata.distribution("turbojpeg")
        paths += [str(dist.locate_file(f)) for f in dist.files or () if "libturbojpeg" in f.name]
    except importlib.metadata.PackageNotFoundError:
        pass
    system = ctypes.util.find_library("turbojpeg")
    return paths + ([system] if system else [])


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declares the argument and result types of the tj3 functions used here."""
    vp, ip, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    signatures = {
        "tj3Init": ([ip], vp), "tj3Destroy": ([vp], None), "tj3Get": ([vp, ip], ip), "tj3Set": ([vp, ip, ip], ip),
        "tj3DecompressHeader": ([vp, ctypes.c_char_p, size], ip),
        "tj3SetScalingFactor": ([vp, ScalingFactor], ip), "tj3SetCroppingRegion": ([vp, Region], ip),
        "tj3Decompress8": ([vp, ctypes.c_char_p, size, vp, ip, ip], ip),
    }
    for name, (args, res) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


@functools.lru_cache(maxsize=None)
def load_library() -> ctypes.CDLL | None:
    """The first candidate libturbojpeg that has the tj3 API, or None."""
    for path in library_candidates():
        try:
            return bind(ctypes.CDLL(path))
        except (OSError, AttributeError):
            continue
    return None


def available() -> bool:
    """True when window decodes run here (library found and JAXSUP_JPEG is not "pillow")."""
    return os.environ.get("JAXSUP_JPEG", "auto") != "pillow" and load_library() is not None


class Handles(threading.local):
    """One TurboJPEG decompressor per thread (handles are not thread-safe); freed with the thread.

    `data`/`header`: the bytes last parsed here and their Header (an op asks for the size, then
    the window: one parse, not four); `parsed`: those bytes while the handle still holds their
    header (tj3Decompress8 then reads no header again), None after a decode.
    """

    def __init__(self) -> None:
        self.lib = load_library()
        self.handle = self.lib.tj3Init(INIT_DECOMPRESS) if self.lib is not None else None
        self.data: bytes | None = None
        self.header: Header | None = None
        self.parsed: bytes | None = None

    def __del__(self) -> None:
        if self.handle:
            self.lib.tj3Destroy(self.handle)


HANDLES = Handles()


def read_header(data: bytes) -> Header | None:
    """Header of a baseline 8-bit gray/YCbCr/RGB JPEG; None for anything else (or no library).

    The file must also end in the EOI marker: a window decode stops after the window's last row,
    so a file cut short below it would decode, where Pillow (reading it all) says "truncated".
    """
    if not available():
        return None
    if data is not HANDLES.data:  # the same bytes object: immutable, kept alive by HANDLES, same header
        HANDLES.data, HANDLES.header = data, parse_header(data)
    return HANDLES.header


def parse_header(data: bytes) -> Header | None:
    """read_header's answer, always parsing (the handle then holds the header: HANDLES.parsed)."""
    HANDLES.parsed = None
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return None
    lib, h = HANDLES.lib, HANDLES.handle
    if not h or lib.tj3DecompressHeader(h, data, len(data)) != 0:
        return None
    HANDLES.parsed = data
    get = {k: lib.tj3Get(h, v) for k, v in PARAM.items()}
    if (get["precision"] != 8 or get["colorspace"] in (CS_CMYK, CS_YCCK) or get["progressive"] or get["lossless"]
            or not 0 <= get["subsamp"] < len(MCU_WIDTH)):
        return None
    return Header(get["width"], get["height"], get["subsamp"])


def draft_scale(width: int, height: int, need: tuple[int, int]) -> int:
    """s of the 1/s DCT scale Pillow's JPEG draft picks for a requested size `need` (w, h)."""
    ratio = min(width // max(need[0], 1), height // max(need[1], 1))
    return next((s for s in SCALES if ratio >= s), 1)


def scaled(n: int, s: int) -> int:
    """TJSCALED / libjpeg's output size: ceil(n / s)."""
    return -(-n // s)


def aligned_region(header: Header, s: int, box: tuple[float, float, float, float], margin: float
                   ) -> tuple[int, int, int, int]:
    """(x, y, w, h) in the 1/s-scaled image covering box (l, t, r, b) +- margin; x on an iMCU column."""
    sw, sh = scaled(header.width, s), scaled(header.height, s)
    mcu = scaled(MCU_WIDTH[header.subsamp], s)
    x0 = max(0, int((box[0] - margin) // mcu) * mcu)
    y0 = max(0, int(box[1] - margin))
    x1 = min(sw, int(np.ceil(box[2] + margin)))
    y1 = min(sh, int(np.ceil(box[3] + margin)))
    return x0, y0, max(x1 - x0, 1), max(y1 - y0, 1)


def decode_region(data: bytes, s: int, region: tuple[int, int, int, int], channels: int) -> np.ndarray | None:
    """The window region (x, y, w, h) of the 1/s-scaled JPEG -> uint8 [h, w, channels]; None on any
    libjpeg error or warning (corrupt, truncated: the caller's Pillow path then decides)."""
    lib, h = HANDLES.lib, HANDLES.handle
    if not h or (data is not HANDLES.parsed and lib.tj3DecompressHeader(h, data, len(data)) != 0):
        HANDLES.parsed = None
        return None
    HANDLES.parsed = None  # the decode below ends the handle's hold of this header
    x, y, w, hh = region
    out = np.empty((hh, w, channels), np.uint8)
    if (lib.tj3SetScalingFactor(h, ScalingFactor(1, s)) != 0
            or lib.tj3SetCroppingRegion(h, Region(x, y, w, hh)) != 0
            or lib.tj3Decompress8(h, data, len(data), out.ctypes.data, w * channels,
                                  PF_RGB if channels == 3 else PF_GRAY) != 0):
        return None
    return out


def window(data: bytes, box: tuple[float, float, float, float] | None, channels: int, margin: float,
           need: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[float, ...]] | None:
    """libjpeg-turbo decode of box (l, t, r, b, full-size pixels; None: all) +- margin (scaled pixels)
    at the DCT scale Pillow's draft picks for `need` (w, h; None: full size) ->
    (uint8 [h, w, C], box in that array's pixels); None -> take the Pillow path."""
    header = read_header(data)
    if header is None or header.width * header.height > (Image.MAX_IMAGE_PIXELS or math.inf):
        return None  # Pillow's decompression-bomb check decides those
    s = 1 if need is None else draft_scale(header.width, header.height, need)
    sx = scaled(header.width, s) / header.width
    sy = scaled(header.height, s) / header.height
    left, top, right, bottom = box or (0, 0, header.width, header.height)
    scaled_box = (left * sx, top * sy, right * sx, bottom * sy)
    region = aligned_region(header, s, scaled_box, margin)
    out = decode_region(data, s, region, channels)
    if out is None:
        return None
    x, y = region[:2]
    return out, (scaled_box[0] - x, scaled_box[1] - y, scaled_box[2] - x, scaled_box[3] - y)
