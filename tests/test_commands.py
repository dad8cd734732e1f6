"""``mlx-alias segment`` and ``mlx-alias verify`` through the real command line (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from clitools import clean_failure, run_cli


def _pattern(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)


def _images(root: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    """One file per kind a user may hold, with its upright (height, width)."""
    rgb = _pattern(90, 160)
    made = {}

    def save(name: str, image: Image.Image, **kw) -> None:
        path = root / name
        image.save(path, **kw)
        made[name] = path

    save("photo.jpg", Image.fromarray(rgb), quality=90)
    save("alpha.png", Image.fromarray(rgb).convert("RGBA"))
    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("palette.gif", Image.fromarray(rgb).convert("P"))
    save("deep.png", Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).convert("I;16"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    save("rotated.jpg", Image.fromarray(rgb), exif=exif.tobytes())
    sizes = {name: (90, 160) for name in made}
    sizes["rotated.jpg"] = (160, 90)
    return {name: (made[name], sizes[name]) for name in made}


def test_segment_writes_overlay_and_json_for_any_image(mlx_weights, tmp_path):
    for name, (path, (height, width)) in _images(tmp_path).items():
        out = tmp_path / f"{path.stem}-out.png"
        result = run_cli(
            "segment",
            "--weights",
            mlx_weights,
            "--image",
            path,
            "--prompt",
            "a red car",
            "--out",
            out,
            "--threshold",
            "0",
        )
        assert result.exit_code == 0, (name, result.output)
        overlay = Image.open(out)
        assert overlay.size == (width, height) and overlay.mode == "RGB", name
        report = json.loads(out.with_suffix(".json").read_text())
        assert (report["height"], report["width"]) == (height, width)
        assert len(report["instances"]) == 20  # threshold 0 keeps every query of the tiny model
        scores = [i["score"] for i in report["instances"]]
        assert scores == sorted(scores, reverse=True)
        for inst in report["instances"]:
            rle = {"size": inst["mask_rle"]["size"], "counts": inst["mask_rle"]["counts"].encode()}
            assert mask_utils.decode(rle).shape == (height, width)
            x0, y0, x1, y1 = inst["box_xyxy"]
            assert x0 <= x1 and y0 <= y1


def test_segment_from_token_ids_and_threshold(mlx_weights, tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(_pattern(64, 64)).save(image)
    out = tmp_path / "ids.png"
    result = run_cli(
        "segment", "--weights", mlx_weights, "--image", image, "--tokens", "1929, 320", "--out", out, "--threshold", "1"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["tokens"] == [1929, 320] and report["prompt"] is None and report["instances"] == []
    assert Image.open(out).size == (64, 64)


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--prompt", "cat", "--tokens", "5"], "exactly one"),
        ([], "exactly one"),
        (["--tokens", "5,x"], "comma-separated integers"),
        (["--tokens", "0,5"], "0 is padding"),
        (["--tokens", "49407"], "start/end"),
        (["--prompt", " "], "the prompt is empty"),
        (["--prompt", "dog " * 100], "is 100 tokens long; SAM3 reads at most 30"),
    ],
)
def test_segment_bad_prompts(mlx_weights, tmp_path, args, phrase):
    image = tmp_path / "a.png"
    Image.fromarray(_pattern(32, 32)).save(image)
    result = run_cli("segment", "--weights", mlx_weights, "--image", image, "--out", tmp_path / "o.png", *args)
    clean_failure(result, phrase)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.json").exists()


def test_segment_bad_files(mlx_weights, tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(_pattern(32, 32)).save(image)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "o.png"
    clean_failure(
        run_cli("segment", "--weights", mlx_weights, "--image", tmp_path / "none.jpg", "--prompt", "x", "--out", out),
        "no such file",
    )
    clean_failure(
        run_cli("segment", "--weights", mlx_weights, "--image", broken, "--prompt", "x", "--out", out),
        "truncated, corrupt or not an image",
    )
    clean_failure(
        run_cli("segment", "--weights", tmp_path, "--image", image, "--prompt", "x", "--out", out),
        "not an mlx-alias weights folder",
    )
    clean_failure(
        run_cli("segment", "--weights", mlx_weights, "--image", image, "--prompt", "x", "--out", tmp_path / "o.jpg"),
        "must name a .png",
    )
    clean_failure(
        run_cli(
            "segment", "--weights", mlx_weights, "--image", image, "--prompt", "x", "--out", tmp_path / "no" / "o.png"
        ),
        "does not exist",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "broken.jpg"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(_pattern(120, 200)).save(path, quality=92)
    return path


def test_verify_passes_on_its_own_conversion(checkpoints, mlx_weights, photo):
    result = run_cli(
        "verify",
        "--checkpoint",
        checkpoints["hf"],
        "--weights",
        mlx_weights,
        "--image",
        photo,
        "--prompt",
        "a striped umbrella",
        "--json",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert list(report) == [
        "image_features_rel_err",
        "text_features_rel_err",
        "score_max_abs_err",
        "presence_abs_err",
        "box_max_abs_err",
        "mask_logits_rel_err",
        "mask_iou_mean",
        "mask_iou_min",
        "grad_cosine",
        "passed",
    ]
    assert report["passed"] is True and report["image_features_rel_err"] < 1e-5 and report["mask_logits_rel_err"] < 1e-5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_verify_holds_the_reduced_precision_tolerances(checkpoints, photo, tmp_path, dtype):
    from mlx_alias.convert.convert import convert
    from mlx_alias.reference.verify import verify

    convert(checkpoints["sam3"], tmp_path / dtype, dtype)
    report, details = verify(checkpoints["sam3"], tmp_path / dtype, photo, "a striped umbrella", "cpu")
    assert details["dtype"] == dtype
    assert report["passed"], details["failures"]


def test_verify_fails_on_other_weights(tiny_cfg, mlx_weights, photo, tmp_path):
    from mlx_alias.reference.build import build_model
    from mlx_alias.reference.checkpoint import save_checkpoint

    other = save_checkpoint(build_model(tiny_cfg, seed=99, device="cpu"), tiny_cfg, tmp_path / "other").parent
    result = run_cli(
        "verify",
        "--checkpoint",
        other,
        "--weights",
        mlx_weights,
        "--image",
        photo,
        "--prompt",
        "cat",
        "--device",
        "cpu",
    )
    assert result.exit_code == 1
    assert "out of tolerance: image_features_rel_err" in result.output
    assert "passed                   False" in result.output
