"""load_image on every kind of file a user may hold, and preprocess against sam3's own transform."""

from __future__ import annotations

import functools
import io
import platform

import numpy as np
import pytest
from PIL import Image

from mlx_alias.image import ImageError, load_image, preprocess, preprocess_batch, resize_uint8

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _quadrants(h: int = 20, w: int = 40) -> np.ndarray:
    """Non-square, one flat colour per quadrant, so that a rotation or flip shows."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = RED
    a[: h // 2, w // 2 :] = GREEN
    a[h // 2 :, : w // 2] = BLUE
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    return a


def _save(tmp_path, name: str, im: Image.Image, **kw) -> str:
    path = tmp_path / name
    im.save(path, **kw)
    return str(path)


def _check(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    assert rgb.dtype == np.uint8 and rgb.shape == (*shape, 3)
    return rgb.astype(int)


# ---- modes -------------------------------------------------------------------------------------


def test_rgb_png_exact(tmp_path):
    a = _quadrants()
    np.testing.assert_array_equal(load_image(_save(tmp_path, "a.png", Image.fromarray(a))), a)


def test_rgb_jpeg(tmp_path):
    a = _quadrants(32, 48)
    out = _check(load_image(_save(tmp_path, "a.jpg", Image.fromarray(a), quality=95)), (32, 48))
    for y, x in ((8, 12), (8, 36), (24, 12), (24, 36)):  # quadrant centres, away from chroma bleed
        assert np.abs(out[y, x] - a[y, x]).max() <= 8, (y, x, out[y, x])


@pytest.mark.parametrize("mode", ["L", "1"])
def test_gray_replicated(tmp_path, mode):
    g = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (5, 1))
    im = Image.fromarray(g).convert(mode)
    out = _check(load_image(_save(tmp_path, "g.png", im)), g.shape)
    expected = np.asarray(im.convert("L")).astype(int)  # "1" is 0 or 255
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_palette(tmp_path):
    im = Image.fromarray(_quadrants()).quantize(4)
    assert im.mode == "P"
    np.testing.assert_array_equal(load_image(_save(tmp_path, "p.png", im)), _quadrants())


def test_palette_transparency_over_white(tmp_path):
    im = Image.fromarray(_quadrants()).quantize(4)
    red_index = im.getpixel((0, 0))
    out = _check(load_image(_save(tmp_path, "p.png", im, transparency=red_index)), (20, 40))
    expected = _quadrants()
    expected[:10, :20] = 255  # the transparent (red) quadrant shows white
    np.testing.assert_array_equal(out, expected)


def test_rgb_colour_key_transparency_over_white(tmp_path):
    path = _save(tmp_path, "k.png", Image.fromarray(_quadrants()), transparency=RED)
    expected = _quadrants()
    expected[:10, :20] = 255
    np.testing.assert_array_equal(load_image(path), expected)


def test_rgba_over_white(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 255)  # opaque: kept
    a[0, 1] = (0, 0, 0, 0)  # transparent black: white
    a[0, 2] = (200, 100, 0, 128)  # half: blended with white
    out = _check(load_image(_save(tmp_path, "a.png", Image.fromarray(a, "RGBA"))), (2, 3))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert tuple(out[0, 2]) == tuple(round((c * 128 + 255 * 127) / 255) for c in (200, 100, 0))


def test_la_over_white(tmp_path):
    la = np.array([[[40, 255], [40, 0], [0, 51]]], np.uint8)
    out = _check(load_image(_save(tmp_path, "la.png", Image.fromarray(la, "LA"))), (1, 3))
    np.testing.assert_array_equal(out[0, :, 0], [40, 255, 204])  # 255 * (1 - 51/255)
    assert (out == out[..., :1]).all()


def test_16bit_full_range_not_stretched(tmp_path):
    v = np.array([[0, 65535, 128 * 257, 128, 1000]], np.uint16)
    im = Image.fromarray(v)
    assert im.mode == "I;16"
    out = _check(load_image(_save(tmp_path, "g16.png", im)), (1, 5))
    # 128 -> 0.498 rounds to 0; a dark image (max 1000) stays dark: 1000*255/65535 = 3.9 -> 4.
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 128, 0, 4])
    assert (out == out[..., :1]).all()


def test_float_outside_0_1_read_as_0_255(tmp_path):
    f = np.array([[-5.0, 0.4, 100.6, 300.0, np.nan]], np.float32)
    out = _check(load_image(_save(tmp_path, "f.tiff", Image.fromarray(f, "F"))), (1, 5))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 101, 255, 0])


def test_float_in_0_1_scaled_to_0_255(tmp_path):
    """A float TIFF in 0..1, as most tools write one: a mid-grey 0.5 is 128, not black."""
    f = np.array([[0.0, 0.25, 0.5, 1.0, np.nan]], np.float32)
    out = _check(load_image(_save(tmp_path, "f01.tiff", Image.fromarray(f, "F"))), (1, 5))
    np.testing.assert_array_equal(out[0, :, 0], [0, 64, 128, 255, 0])


def test_cmyk_jpeg(tmp_path):
    im = Image.new("CMYK", (16, 8), (255, 0, 0, 0))  # pure cyan
    out = _check(load_image(_save(tmp_path, "c.jpg", im, quality=95)), (8, 16))
    assert np.abs(out - np.array([0, 255, 255])).max() <= 4


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 4), c) for c in (RED, BLUE)]
    path = _save(tmp_path, "a.gif", frames[0], save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 2
    np.testing.assert_array_equal(load_image(path), np.broadcast_to(RED, (4, 6, 3)))


def test_exif_orientation_6_is_made_upright(tmp_path):
    # Stored 40 wide x 20 tall; orientation 6 means "rotate 90 degrees clockwise to view".
    exif = Image.Exif()
    exif[0x0112] = 6
    im = Image.fromarray(_quadrants(32, 64))
    out = _check(load_image(_save(tmp_path, "r.jpg", im, exif=exif.tobytes(), quality=95)), (64, 32))
    # Clockwise: stored top-left (red) goes top-right, top-right (green) bottom-right,
    # bottom-left (blue) top-left, bottom-right (white) bottom-left.
    for (y, x), colour in {(8, 24): RED, (56, 24): GREEN, (8, 8): BLUE, (56, 8): (255, 255, 255)}.items():
        assert np.abs(out[y, x] - np.array(colour)).max() <= 24, (y, x, out[y, x])


# ---- errors ------------------------------------------------------------------------------------


def _valid_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content",
    [
        ("truncated.jpg", _valid_bytes("JPEG")[:-600]),
        ("truncated.png", _valid_bytes("PNG")[:-600]),
        ("notes.jpg", b"this is a text file, not a picture\n"),
        ("empty.png", b""),
    ],
)
def test_unreadable_raises_image_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match="cannot read image .*: file is truncated") as info:
        load_image(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("name, reason", [("nowhere.jpg", "no such file"), ("folder.jpg", "is a directory")])
def test_missing_file_or_folder(tmp_path, name, reason):
    (tmp_path / "folder.jpg").mkdir()
    path = tmp_path / name
    with pytest.raises(ImageError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value)


# ---- preprocess --------------------------------------------------------------------------------


def test_preprocess_shape_and_range():
    x = preprocess(np.full((5, 9, 3), 255, np.uint8), 16)
    assert x.dtype == np.float32 and x.shape == (16, 16, 3)
    np.testing.assert_array_equal(x, 1.0)
    np.testing.assert_array_equal(preprocess(np.zeros((3, 3, 3), np.uint8), 4), -1.0)
    batch = preprocess_batch([np.zeros((3, 4, 3), np.uint8), np.zeros((7, 2, 3), np.uint8)], 8)
    assert batch.shape == (2, 8, 8, 3) and batch.dtype == np.float32


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3))])
def test_preprocess_rejects_non_rgb_uint8(bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(bad, 8)


@functools.cache
def _noise(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)


@functools.cache
def _gradient(h: int, w: int) -> np.ndarray:
    x = np.linspace(0, 255, w).astype(np.uint8)[None, :]
    y = np.linspace(0, 255, h).astype(np.uint8)[:, None]
    diagonal = 3 * x + 7 * y  # wraps around in uint8: steep ramps with sharp edges
    return np.stack(np.broadcast_arrays(x, y, diagonal), -1)


SIZES = [(1, 1), (7, 13), (100, 300), (640, 480), (1200, 1600), (3000, 2000)]


@pytest.fixture(scope="module")
def v2():
    torch = pytest.importorskip("torch")
    v2 = pytest.importorskip("torchvision.transforms.v2")
    # Only torch's native uint8 kernel is reproduced: torchvision takes it on AVX2/AVX512 and
    # ARM CPUs, and falls back to a float32 resize on older x86 CPUs.
    native = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if not native and platform.machine() not in ("aarch64", "arm64"):
        pytest.skip("torchvision resizes uint8 in float32 on this CPU")
    return v2


def _sam3(v2, rgb: np.ndarray, size: int) -> np.ndarray:
    """sam3_image_processor.Sam3Processor's transform, as sam3 builds and applies it, in NHWC."""
    import torch

    transform = v2.Compose(
        [
            v2.ToDtype(torch.uint8, scale=True),
            v2.Resize(size=(size, size)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )
    return transform(v2.functional.to_image(rgb)).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", [224, 1008])
@pytest.mark.parametrize("hw", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_preprocess_matches_sam3_bit_for_bit(v2, hw, size):
    # Tolerance 0: the resize is torch's own fixed-point algorithm (int16 weights at the same
    # precision, same rounding, width pass then height pass), and the float steps are the same
    # float32 operations, so any difference at all is a bug.
    for rgb in (_noise(*hw), _gradient(*hw)):
        np.testing.assert_array_equal(preprocess(rgb, size), _sam3(v2, rgb, size))


def test_resize_non_square_target_matches_torch(v2):
    rgb = _noise(37, 91)
    for h, w in ((5, 200), (300, 17), (37, 40), (37, 91)):
        ref = v2.Resize(size=(h, w))(v2.functional.to_image(rgb)).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(resize_uint8(rgb, h, w), ref)
