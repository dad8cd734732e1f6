"""The search's data layer on small real COCO datasets written to disk: where the files are found,
the masks and crowd regions, positives and negatives, the splits and every error a user can cause."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mlx_alias.data.coco import DatasetError, _rle_counts, load_dataset, resolve
from mlx_alias.data.split import Split, caution, describe, split_category

H, W = 48, 64


def _box(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _polygon(y0: int, y1: int, x0: int, x1: int) -> list[float]:
    """A rectangle's corners; pycocotools fills exactly the pixels of ``_box`` with these bounds."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _uncompressed(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a 0 run."""
    flat = m.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(m.shape), "counts": np.diff(np.concatenate([[0], edges])).tolist()}


def _compressed(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _data() -> dict:
    """Images 1 (PNG), 2 (JPEG), 3 (no annotations); categories with a name, none, an empty one,
    and one with crowd regions only."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "b.jpg", "height": H, "width": W},
            {"id": 3, "file_name": "c.png", "height": H, "width": W},
        ],
        "categories": [{"id": 1, "name": " cat "}, {"id": 2}, {"id": 3, "name": ""}, {"id": 4, "name": "kite"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [_polygon(5, 20, 10, 30)]},
            {"id": 11, "image_id": 1, "category_id": 2, "segmentation": _compressed(_box(0, 10, 0, 8))},
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": _uncompressed(_box(20, 40, 40, 60))},
            {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 1, "segmentation": _uncompressed(_box(0, 6, 0, 64))},
            {"id": 14, "image_id": 2, "category_id": 4, "iscrowd": 1, "segmentation": [_polygon(0, 10, 0, 10)]},
            # A second part of fewer than 3 points: no area, dropped rather than read as a box.
            {"id": 15, "image_id": 1, "category_id": 3, "segmentation": [_polygon(30, 40, 0, 4), [1, 1, 3, 1]]},
            {"id": 16, "image_id": 2, "category_id": 1, "iscrowd": 1, "segmentation": [_polygon(44, 48, 0, 2)]},
        ],
    }


def _image(path: Path, h: int = H, w: int = W, **save) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path, **save)


def _write(root: Path, data: dict, ann: str = "annotations.json", images: str = ".") -> Path:
    """The JSON at ``root/ann`` and every listed image under ``root/images``; returns the JSON."""
    path = root / ann
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    for im in data["images"]:
        _image(root / images / im["file_name"], im.get("height") or H, im.get("width") or W)
    return path


@pytest.fixture
def dataset(tmp_path):
    return load_dataset(_write(tmp_path, _data()))


def _error(path, match: str, **kw) -> str:
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset(path, **kw)
    return _one_line(e.value)


def _one_line(e: Exception) -> str:
    message = str(e)
    assert "\n" not in message and message.strip() == message
    return message


# ---- where the files are ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ann, images, as_folder",
    [
        ("annotations.json", ".", True),  # images beside the JSON
        ("annotations.json", "images", True),  # <json dir>/images
        ("instances_train.json", "images", True),
        ("annotations/instances_val2017.json", "val2017", True),  # COCO: <json dir>/../<stem>
        ("annotations/mine.json", "images", True),  # <json dir>/../images
        ("labels/data.json", "labels/images", False),
        ("labels/data.json", "labels", False),
    ],
)
def test_resolve_layouts(tmp_path, ann, images, as_folder):
    path = _write(tmp_path, _data(), ann=ann, images=images)
    for given in [path, tmp_path] if as_folder else [path]:
        assert resolve(given) == (path, tmp_path / images)
    assert load_dataset(path).images[2].path == (tmp_path / images / "b.jpg").absolute()


def test_resolve_candidate_order(tmp_path):
    path = _write(tmp_path, _data(), images="images")
    _write(tmp_path, _data(), images=".")
    assert resolve(path)[1] == tmp_path  # the JSON's folder before <json dir>/images
    other = tmp_path / "o"
    path = _write(other, _data(), ann="annotations/instances_val.json", images="val")
    _write(other, _data(), ann="annotations/instances_val.json", images="images")
    assert resolve(path)[1] == other / "images"  # <json dir>/../images before <json dir>/../<stem>


def test_resolve_file_names_with_folders(tmp_path):
    data = _data()
    for im in data["images"]:
        im["file_name"] = "val/" + im["file_name"]
    path = _write(tmp_path, data)
    assert resolve(path) == (path, tmp_path)


def test_resolve_relative_file_name(tmp_path, monkeypatch):
    path = _write(tmp_path, _data(), ann="annotations/x.json", images="images")
    monkeypatch.chdir(path.parent)
    assert resolve(Path("x.json")) == (path, tmp_path / "images")


def test_resolve_given_image_folder(tmp_path):
    path = _write(tmp_path, _data(), images="elsewhere")
    assert resolve(path, tmp_path / "elsewhere") == (path, tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="image folder .* does not exist"):
        resolve(path, tmp_path / "nowhere")


def test_resolve_folder_precedence(tmp_path):
    _write(tmp_path, _data(), ann="instances_x.json")
    chosen = _write(tmp_path, _data(), ann="annotations.json")
    assert resolve(tmp_path)[0] == chosen
    other = tmp_path / "o"
    _write(other, _data(), ann="annotations/captions_val.json", images="images")
    chosen = _write(other, _data(), ann="annotations/instances_val.json", images="images")
    assert resolve(other) == (chosen, other / "images")


def test_resolve_folder_errors(tmp_path):
    _write(tmp_path, _data(), ann="instances_a.json")
    _write(tmp_path, _data(), ann="instances_b.json")
    with pytest.raises(DatasetError, match=r"several annotation files \(instances_a.json and instances_b.json\)") as e:
        resolve(tmp_path)
    _one_line(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="found no annotation file in .*annotations/\\*.json") as e:
        resolve(tmp_path / "empty")
    _one_line(e.value)
    with pytest.raises(DatasetError, match="does not exist"):
        resolve(tmp_path / "missing.json")


def test_resolve_falls_back_to_an_existing_folder(tmp_path):
    path = _write(tmp_path, _data(), images="elsewhere")
    (tmp_path / "images").mkdir()
    assert resolve(path)[1] == tmp_path / "images"
    message = _error(path, "3 of 3 image files are missing from")
    assert str(tmp_path / "images") in message and "a.png, b.jpg and c.png" in message


# ---- contents ----------------------------------------------------------------------------------


def test_categories_and_images(dataset, tmp_path):
    assert {c.id: c.name for c in dataset.categories.values()} == {1: "cat", 2: None, 3: None, 4: "kite"}
    assert dataset.categories[1].label == "category 1 ('cat')" and dataset.categories[2].label == "category 2"
    assert [(i.id, i.path.name, i.height, i.width) for i in dataset.images.values()] == [
        (1, "a.png", H, W),
        (2, "b.jpg", H, W),
        (3, "c.png", H, W),
    ]
    assert dataset.image(2).shape == (H, W, 3)


def test_positives_and_negatives(dataset):
    assert (dataset.positives(1), dataset.negatives(1)) == ([1, 2], [3])
    assert (dataset.positives(2), dataset.negatives(2)) == ([1], [2, 3])
    # crowd only: not a positive, and not a negative either
    assert (dataset.positives(4), dataset.negatives(4)) == ([], [1, 3])


def test_masks(dataset):
    t = dataset.targets(1, 1)  # polygon
    assert t.masks.dtype == bool and t.masks.shape == (1, H, W)
    np.testing.assert_array_equal(t.masks[0], _box(5, 20, 10, 30))
    assert not t.crowd.any() and t.crowd.shape == (H, W)
    np.testing.assert_array_equal(dataset.targets(1, 2).masks[0], _box(0, 10, 0, 8))  # compressed RLE
    np.testing.assert_array_equal(dataset.targets(1, 3).masks[0], _box(30, 40, 0, 4))  # degenerate part dropped
    t = dataset.targets(2, 1)  # uncompressed RLE, and two crowd regions
    np.testing.assert_array_equal(t.masks, _box(20, 40, 40, 60)[None])
    np.testing.assert_array_equal(t.crowd, _box(0, 6, 0, 64) | _box(44, 48, 0, 2))
    t = dataset.targets(3, 1)
    assert t.masks.shape == (0, H, W) and not t.crowd.any()
    np.testing.assert_array_equal(dataset.targets(2, 4).crowd, _box(0, 10, 0, 10))
    assert not t.masks.flags.writeable  # shared through the cache


def test_missing_sizes_are_read_upright_from_the_file(tmp_path):
    data = _data()
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2 or "counts" not in a["segmentation"]]
    data["annotations"].append({"id": 20, "image_id": 2, "category_id": 1, "segmentation": [_polygon(50, 60, 0, 40)]})
    for im in data["images"]:
        del im["height"], im["width"]
    path = _write(tmp_path, data)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64x48, shown rotated: 48 wide, 64 high
    _image(tmp_path / "c.png", exif=exif)
    _image(tmp_path / "b.jpg", exif=exif)
    ds = load_dataset(path)
    assert [(i.height, i.width) for i in ds.images.values()] == [(H, W), (W, H), (W, H)]
    np.testing.assert_array_equal(ds.targets(2, 1).masks, _box(50, 60, 0, 40, h=W, w=H)[None])
    assert ds.image(3).shape == (W, H, 3)


def test_check_category(dataset):
    dataset.check_category(1)
    with pytest.raises(DatasetError, match=r"^category 4 \('kite'\) has no instances to learn from$"):
        dataset.check_category(4)
    for call in (dataset.check_category, dataset.positives, dataset.negatives, lambda c: dataset.targets(1, c)):
        with pytest.raises(
            DatasetError, match=r"category 9 is not in the dataset \(its category ids are 1, 2, 3 and 4"
        ):
            call(9)
    with pytest.raises(DatasetError, match="image 9 is not in the dataset"):
        dataset.targets(9, 1)


# ---- errors ------------------------------------------------------------------------------------


def _set(where, key, value):
    return lambda d: where(d).__setitem__(key, value)


def _ann(d):
    return d["annotations"][0]


ERRORS = [
    (lambda d: d.pop("images"), "is not a COCO annotation file (it has no 'images' key)"),
    (lambda d: d.pop("annotations"), "(it has no 'annotations' key)"),
    (lambda d: (d.pop("annotations"), d.pop("categories")), "(it has no 'annotations' and 'categories' keys)"),
    (lambda d: d.update(images=[], annotations=[]), "the annotation file lists no images"),
    (_set(lambda d: d, "categories", {}), "the annotation file's 'categories' is not a list of objects"),
    (_set(_ann, "image_id", 99), "annotation 10 refers to image 99, which is not listed"),
    (_set(_ann, "image_id", "1"), "annotation 10 refers to image '1', which is not listed"),
    (_set(_ann, "category_id", 99), "annotation 10 refers to category 99, which is not listed"),
    (_set(lambda d: d["images"][1], "id", 1), "the image id 1 is used twice"),
    (_set(lambda d: d["categories"][1], "id", 1), "the category id 1 is used twice"),
    (_set(lambda d: d["annotations"][1], "id", 10), "the annotation id 10 is used twice"),
    (_set(lambda d: d["images"][1], "id", "2"), "image number 2 in the list has the id '2', which is not an integer"),
    (_set(lambda d: d["images"][1], "file_name", ""), "image 2 has no file_name"),
    (_set(lambda d: d["images"][1], "height", 0), "image 2 has the height 0, which is not a positive integer"),
    (_set(lambda d: d["categories"][0], "name", 5), "category 1 has a name that is not text"),
    (_set(_ann, "iscrowd", 2), "annotation 10 has iscrowd 2 (expected 0 or 1)"),
    (lambda d: _ann(d).pop("segmentation"), "annotation 10 has no segmentation"),
    (_set(_ann, "segmentation", []), "annotation 10 has no segmentation"),
    (_set(_ann, "segmentation", [[1, 2, 3, 4, 5]]), "annotation 10 has a polygon that is not a list of x, y numbers"),
    (_set(_ann, "segmentation", [[1, 2, 3, 4, "5", 6]]), "a polygon that is not a list of x, y numbers"),
    (_set(_ann, "segmentation", [[1, 1, 3, 1]]), "annotation 10 has no polygon with 3 or more points"),
    (_set(_ann, "segmentation", "abc"), "annotation 10 has a segmentation that is neither polygons nor RLE"),
    (_set(_ann, "segmentation", [[1, 2, 3, 4, float("nan"), 6]]), "has a polygon with a coordinate that is not finite"),
    (_set(_ann, "segmentation", {"size": [H, W], "counts": [1, 2]}), "counts are malformed or do not add up to the"),
    (_set(_ann, "segmentation", {"size": [H, W], "counts": [H * W + 1, -1]}), "counts are malformed"),
    (_set(_ann, "segmentation", {"size": [W, H], "counts": [H * W]}), "has an RLE of size [64, 48] on an image"),
    (_set(lambda d: d["annotations"][1]["segmentation"], "counts", ""), "annotation 11 has an RLE whose counts are"),
    (_set(lambda d: d["annotations"][1]["segmentation"], "counts", "zzzz"), "annotation 11 has an RLE whose counts"),
    (_set(lambda d: d["annotations"][1]["segmentation"], "counts", "!!"), "annotation 11 has an RLE whose counts"),
]


@pytest.mark.parametrize("change, match", ERRORS)
def test_json_errors(tmp_path, change, match):
    data = _data()
    _write(tmp_path, data)  # the images, under their valid names
    change(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    _error(path, re.escape(match))


def test_invalid_json(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text('{"images": [\n  {"id": 1,, }]}')
    _error(path, r"is not valid JSON \(line 2 column 12: ")
    path.write_bytes(b'{"images": "\xff"}')
    _error(path, r"is not valid JSON \(it is not UTF-8 text\)")
    path.write_text("[1, 2]")
    _error(path, re.escape("(it has no 'images', 'annotations' and 'categories' keys)"))


def test_missing_images_are_listed(tmp_path):
    data = _data()
    data["images"] += [{"id": i, "file_name": f"m{i}.png", "height": H, "width": W} for i in range(4, 10)]
    path = _write(tmp_path, data)
    for i in range(4, 10):
        (tmp_path / f"m{i}.png").unlink()
    _error(path, r"6 of 9 image files are missing from .*: m4.png, m5.png, m6.png, m7.png, m8.png and 1 more$")


def test_size_disagreeing_with_the_file(tmp_path):
    data = _data()
    data["images"][2].update(height=W, width=H)
    path = _write(tmp_path, data)
    _image(tmp_path / "c.png")
    _error(path, r"^image 3 \(c.png\) is 64x48 pixels but the annotations say 48x64, so its masks would not line up$")
    exif = Image.Exif()
    exif[0x0112] = 8
    data["images"][2].update(height=H, width=W)  # now right for the stored pixels, wrong upright
    path.write_text(json.dumps(data))
    _image(tmp_path / "c.png", exif=exif)
    _error(path, r"image 3 \(c.png\) is 48x64 pixels but the annotations say 64x48")


def test_image_decoded_size_is_checked(dataset):
    import dataclasses

    dataset.images[3] = dataclasses.replace(dataset.images[3], height=10)
    with pytest.raises(DatasetError, match="image 3 .* so its masks would not line up"):
        dataset.image(3)


def test_unreadable_image(tmp_path):
    path = _write(tmp_path, _data())
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    _error(path, r"cannot read image .*b.jpg: file is truncated, corrupt or not an image")


def test_pycocotools_failure_names_the_annotation(dataset, monkeypatch):
    def fail(ann):
        raise Exception("input type is not supported.")

    monkeypatch.setattr(dataset._coco, "annToMask", fail)
    with pytest.raises(DatasetError, match=r"^annotation 11 has a segmentation that pycocotools cannot decode") as e:
        dataset.targets(1, 2)
    _one_line(e.value)


def test_compressed_rle_counts_read_as_pycocotools_does():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
        assert _rle_counts(_compressed(m)["counts"]) == _uncompressed(m)["counts"]
    assert _rle_counts(_compressed(np.ones((300, 500), bool))["counts"]) == [0, 150000]


# ---- splits ------------------------------------------------------------------------------------


def _many(root: Path, n_pos: int, n_neg: int, reverse: bool = False) -> Path:
    """Images 1..n_pos with one category-1 instance each, then n_neg without; category 2 on image 1."""
    n = n_pos + n_neg
    images = [{"id": i, "file_name": f"{i}.png", "height": 8, "width": 8} for i in range(1, n + 1)]
    triangle = [[1, 1, 5, 1, 5, 5]]
    anns = [{"id": 100 + i, "image_id": i, "category_id": 1, "segmentation": triangle} for i in range(1, n_pos + 1)]
    anns.append({"id": 1, "image_id": 1, "category_id": 2, "segmentation": triangle})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}, {"id": 2}]}
    if reverse:
        data = {k: v[::-1] for k, v in reversed(data.items())}
    for im in images:
        _image(root / im["file_name"], 8, 8)
    path = root / f"ann{int(reverse)}.json"
    path.write_text(json.dumps(data))
    return path


def test_split(tmp_path):
    ds = load_dataset(_many(tmp_path, 12, 8))
    s = split_category(ds, 1, 0.25, seed=0)
    assert (len(s.holdout_positives), len(s.holdout_negatives)) == (3, 2)
    for train, holdout, ids in [
        (s.train_positives, s.holdout_positives, ds.positives(1)),
        (s.train_negatives, s.holdout_negatives, ds.negatives(1)),
    ]:
        assert train == sorted(train) and holdout == sorted(holdout) and sorted(train + holdout) == ids
    assert describe(s) == "train 9 positive / 6 negative images, holdout 3 / 2"
    assert caution(s) is None
    assert "cannot see false positives" in caution(
        Split(s.train_positives, [], s.holdout_positives, s.holdout_negatives)
    )
    assert split_category(ds, 1, 0.25, seed=0) == s
    assert any(split_category(ds, 1, 0.25, seed=k) != s for k in range(1, 4))
    assert split_category(load_dataset(_many(tmp_path, 12, 8, reverse=True)), 1, 0.25, seed=0) == s
    assert split_category(ds, 1, 0.0, seed=0) == Split(ds.positives(1), ds.negatives(1), [], [])


def test_split_is_the_same_in_another_process(tmp_path):
    path = _many(tmp_path, 12, 8)
    ds = load_dataset(path)
    expected = [split_category(ds, 1, f, seed=3) for f in (0.25, 0.5)]
    code = (
        "import sys; from mlx_alias.data.coco import load_dataset; from mlx_alias.data.split import split_category;"
        "ds = load_dataset(sys.argv[1]); print([vars(split_category(ds, 1, f, seed=3)) for f in (0.25, 0.5)])"
    )
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str([vars(s) for s in expected])


def test_split_edge_cases(tmp_path):
    ds = load_dataset(_many(tmp_path, 3, 1))
    s = split_category(ds, 2, 0.5, seed=0)  # one positive: it trains
    assert (s.train_positives, s.holdout_positives) == ([1], [])
    ds2 = load_dataset(_many(tmp_path / "two", 2, 0))
    assert len(split_category(ds2, 1, 0.1, seed=0).holdout_positives) == 1  # round(0.2) = 0, raised to 1
    s = split_category(ds, 1, 0.9, seed=0)  # round(2.7) = 3, lowered to keep one to train on
    assert (len(s.train_positives), len(s.holdout_positives), s.train_negatives, s.holdout_negatives) == (1, 2, [], [4])
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"^the holdout fraction must be at least 0 and below 1, got"):
            split_category(ds, 1, bad, seed=0)
    with pytest.raises(DatasetError, match="category 7 is not in the dataset"):
        split_category(ds, 7, 0.2, seed=0)
