"""Reading images and turning them into SAM3's input, without torch.

``preprocess`` reproduces sam3's ``Sam3Processor`` transform bit for bit: torchvision's
``v2.Resize`` on a uint8 image runs torch's fixed-point antialiased bilinear kernel, whose int16
weights differ from Pillow's 22-bit ones (Pillow's BILINEAR is off by up to 2 in uint8 units on
a few percent of pixels), so the kernel is re-implemented here in numpy.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps


class ImageError(ValueError):
    """An image that cannot be read; the message is one sentence naming the file."""


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode ``path`` into an upright RGB uint8 array [H, W, 3] at its original size."""
    try:
        with Image.open(path) as im:
            # Multi-frame files open on their first frame; load() decodes it now, so a
            # truncated file fails here (Pillow's LOAD_TRUNCATED_IMAGES is left False).
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except FileNotFoundError as e:
        raise ImageError(f"cannot read image {path}: no such file") from e
    except (IsADirectoryError, PermissionError) as e:
        raise ImageError(f"cannot read image {path}: {e.strerror.lower()}") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"cannot read image {path}: it has too many pixels for Pillow") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # OSError: also not-an-image
        raise ImageError(f"cannot read image {path}: file is truncated, corrupt or not an image") from e


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # Scale by the type's full range, not the image's own min/max, so that a dark
        # 16-bit image stays dark.
        v = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return _gray((v * 255 + 32767) // 65535)  # exact rounding: 65535 is odd, no ties
    if im.mode == "F":
        # Floats are conventionally 0..1 (a float TIFF from most tools): scaled to 0..255 when
        # every value lies in that range; other floats are read on 0..255 as Pillow's
        # convert("L") reads them, but rounded, not truncated.
        v = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        if v.size and 0.0 <= v.min() and v.max() <= 1.0:
            v = v * 255.0
        return _gray(np.rint(np.clip(v, 0, 255)))
    if im.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in im.info:
        return _over_white(np.asarray(im.convert("RGBA"), dtype=np.uint32))
    # RGB, 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's own conversions are right.
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _gray(v: np.ndarray) -> np.ndarray:
    return np.repeat(v.astype(np.uint8)[..., None], 3, axis=-1)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    # Transparent pixels are composited over white, as browsers and viewers show them:
    # the colour stored under alpha 0 is arbitrary (often black), and dropping alpha or
    # compositing over black would hide dark subjects on cut-out backgrounds.
    rgb, a = rgba[..., :3], rgba[..., 3:]
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """sam3's transform of an RGB uint8 image: float32 [size, size, 3], channels last, in [-1, 1]."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty RGB uint8 array [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    x = resize_uint8(rgb, size, size).astype(np.float32)
    # The same float32 operations as ToDtype(float32, scale=True) then Normalize(0.5, 0.5).
    x *= np.float32(1.0 / 255)
    return (x - np.float32(0.5)) / np.float32(0.5)


def preprocess_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """``preprocess`` of each image, stacked into [B, size, size, 3]."""
    return np.stack([preprocess(im, size) for im in images])


def resize_uint8(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch's uint8 antialiased bilinear resize (what torchvision's Resize runs on uint8).

    Width first, then height, each pass rounded back to uint8, as torch does.
    """
    out = rgb
    if width != rgb.shape[1]:
        out = _pass(out, width, axis=1)
    if height != rgb.shape[0]:
        out = _pass(out, height, axis=0)
    return out.copy() if out is rgb else out


def _pass(img: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    idx, w, precision = _int16_weights(img.shape[axis], out_size)
    shape = (-1, 1, 1) if axis == 0 else (1, -1, 1)
    out_shape = list(img.shape)
    out_shape[axis] = out_size
    acc = np.full(out_shape, 1 << (precision - 1), dtype=np.int32)  # + 0.5 before the shift: rounds
    for k in range(idx.shape[1]):  # few taps, each one whole-image gather: fast, little memory
        acc += np.take(img, idx[:, k], axis=axis) * w[:, k].reshape(shape)
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def _int16_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per output index: source indices [out, K], int16 weights [out, K], and their precision.

    A numpy transcription of ``_compute_indices_min_size_weights_aa`` and
    ``_compute_index_ranges_int16_weights`` (aten/src/ATen/native/cpu/UpSampleKernel.cpp):
    Pillow's support and centring, weights normalised in float64, then rounded to int16 at
    the largest precision under which the biggest weight still fits.
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # bilinear: interp_size 2, widened when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(np.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size) + 0.5)
    # np.trunc, not floor: C++ casts to int64 round toward zero.
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xsize = np.clip(np.minimum(np.trunc(center + support + 0.5), in_size) - xmin, 0, taps)
    j = np.arange(taps)
    wf = np.maximum(1.0 - np.abs(((j + xmin[:, None]) - center[:, None] + 0.5) * invscale), 0.0)
    wf[j >= xsize[:, None]] = 0.0
    total = np.zeros(out_size)
    for k in range(taps):  # summed left to right, as the C++ loop does
        total += wf[:, k]
    wf = np.divide(wf, total[:, None], out=np.zeros_like(wf), where=total[:, None] != 0)
    precision = 0
    while precision < 22 and int(0.5 + wf.max() * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    w = np.floor(wf * (1 << precision) + 0.5).astype(np.int32)  # weights are >= 0
    idx = np.minimum(xmin[:, None] + j, in_size - 1)  # padded taps have weight 0
    return idx, w, precision
