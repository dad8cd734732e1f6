"""A COCO instance-segmentation dataset as the alias search sees it.

Every category is a concept. Its positives are the images with at least one non-crowd
instance of it, its negatives the images with no instance of it at all, crowd or not.

Where the files are (``resolve``):

* PATH is a file: it is the annotation JSON. The image root is ``images`` when given, else
  the first of these folders that holds the first image's ``file_name``: the JSON's own
  folder, ``<json dir>/images``, ``<json dir>/../images`` and ``<json dir>/../<json stem
  without "instances_">`` (COCO's ``annotations/instances_val2017.json`` beside ``val2017/``).
  When none holds it, the first of the last three that exists, else the JSON's folder (loading
  then names the missing files).
* PATH is a folder: the annotation file is the one match of the first of these patterns that
  matches any file: ``annotations.json``, ``instances*.json``, ``annotations/instances*.json``,
  ``annotations/*.json``; several matches are an error that lists them. The image root is
  then found as for a file.

Crowd regions (``iscrowd=1``) come back as one ``crowd`` mask: they cover many objects without
separating them, so a prediction there is neither right nor wrong and the objective neither
rewards nor penalises it.

Sizes: masks are made at the JSON's height and width, so ``load_dataset`` checks them against
every image file's header (upright, as ``load_image`` returns it) and fills in missing ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from mlx_alias.image import load_image
from mlx_alias.progress import tracked

_KEYS = ("images", "annotations", "categories")
_PATTERNS = ("annotations.json", "instances*.json", "annotations/instances*.json", "annotations/*.json")
_ORIENTATION = 0x0112  # EXIF orientation; 5 to 8 swap width and height


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one sentence."""


@dataclass(frozen=True)
class Category:
    id: int
    name: str | None  # stripped; None when the JSON gives none or an empty one

    @property
    def label(self) -> str:
        """How messages name it: ``category 7 ('kite')``, or ``category 7`` without a name."""
        return f"category {self.id}" + (f" ({self.name!r})" if self.name else "")


@dataclass(frozen=True)
class ImageInfo:
    id: int
    path: Path
    height: int
    width: int


@dataclass(frozen=True)
class Target:
    masks: np.ndarray  # bool [n, H, W], one per non-crowd instance, by annotation id; read-only
    crowd: np.ndarray  # bool [H, W], the union of the category's crowd regions; read-only


class Dataset:
    """A loaded and checked COCO dataset; made by ``load_dataset``."""

    def __init__(self, annotation_file: Path, image_root: Path, data: dict, annotations_sha256: str):
        self.annotation_file = annotation_file
        self.image_root = image_root
        self.annotations_sha256 = annotations_sha256  # of the bytes these annotations were read from
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self._coco = COCO()
            self._coco.dataset = data
            self._coco.createIndex()
        self.categories = {
            c["id"]: Category(c["id"], (c.get("name") or "").strip() or None) for c in data["categories"]
        }
        self.images = {
            i["id"]: ImageInfo(i["id"], image_root / i["file_name"], i["height"], i["width"]) for i in data["images"]
        }
        self._by_category: dict[int, list[dict]] = defaultdict(list)
        for ann in data["annotations"]:
            self._by_category[ann["category_id"]].append(ann)
        # A search revisits the same few images; more would hold full-size masks of many images.
        self._targets = lru_cache(maxsize=16)(self._make_targets)

    def positives(self, category_id: int) -> list[int]:
        """Ids of the images with at least one non-crowd instance of the category, sorted."""
        self._category(category_id)
        return sorted({a["image_id"] for a in self._by_category[category_id] if not a.get("iscrowd")})

    def negatives(self, category_id: int) -> list[int]:
        """Ids of the images with no instance of the category at all (crowd or not), sorted."""
        self._category(category_id)
        present = {a["image_id"] for a in self._by_category[category_id]}
        return sorted(i for i in self.images if i not in present)

    def check_category(self, category_id: int) -> None:
        """Raise unless the category exists and has a non-crowd instance to learn from."""
        category = self._category(category_id)
        if all(a.get("iscrowd") for a in self._by_category[category_id]):
            raise DatasetError(f"{category.label} has no instances to learn from")

    def targets(self, image_id: int, category_id: int) -> Target:
        """The category's instance masks and crowd region in an image, at its original size."""
        self._image(image_id)
        self._category(category_id)
        return self._targets(image_id, category_id)

    def image(self, image_id: int) -> np.ndarray:
        """The image as ``load_image`` reads it (RGB uint8 [H, W, 3]), checked against its masks."""
        info = self._image(image_id)
        rgb = load_image(info.path)
        if rgb.shape[:2] != (info.height, info.width):
            raise DatasetError(_mismatch(info.id, info.path.name, rgb.shape[:2], (info.height, info.width)))
        return rgb

    def _category(self, category_id: int) -> Category:
        if category_id not in self.categories:
            ids = _listing([str(i) for i in sorted(self.categories)])
            raise DatasetError(f"category {category_id} is not in the dataset (its category ids are {ids})")
        return self.categories[category_id]

    def _image(self, image_id: int) -> ImageInfo:
        if image_id not in self.images:
            raise DatasetError(f"image {image_id} is not in the dataset")
        return self.images[image_id]

    def _make_targets(self, image_id: int, category_id: int) -> Target:
        info = self.images[image_id]
        masks, crowd = [], np.zeros((info.height, info.width), dtype=bool)
        for ann in sorted(self._coco.imgToAnns[image_id], key=lambda a: a["id"]):
            if ann["category_id"] == category_id:
                mask = self._mask(ann)
                if ann.get("iscrowd"):
                    crowd |= mask
                else:
                    masks.append(mask)
        stacked = np.stack(masks) if masks else np.zeros((0, info.height, info.width), dtype=bool)
        stacked.flags.writeable = crowd.flags.writeable = False  # shared through the cache
        return Target(stacked, crowd)

    def _mask(self, ann: dict) -> np.ndarray:
        if isinstance(ann["segmentation"], list):
            # Parts under 3 points have no area, and pycocotools reads a 4-number one as a box.
            ann = {**ann, "segmentation": [p for p in ann["segmentation"] if len(p) >= 6]}
        try:  # a last guard: load_dataset's checks leave pycocotools nothing it should reject
            return self._coco.annToMask(ann).astype(bool)
        except Exception as e:  # pycocotools raises bare Exception, TypeError, ValueError...
            raise DatasetError(f"annotation {ann['id']} has a segmentation that pycocotools cannot decode ({e})") from e


def resolve(path: Path, images: Path | None = None) -> tuple[Path, Path]:
    """(annotation file, image root) of a dataset path, by the rules in the module docstring."""
    annotation_file, data, _ = _read(Path(path))
    return annotation_file, _image_root(annotation_file, data, images)


def load_dataset(path: Path, images: Path | None = None) -> Dataset:
    """Find, read and check a COCO dataset; every problem is a one-sentence ``DatasetError``."""
    annotation_file, data, digest = _read(Path(path))
    root = _image_root(annotation_file, data, images)
    _check_files(data["images"], root)
    sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    for ann in data["annotations"]:
        problem = _segmentation_problem(ann.get("segmentation"), *sizes[ann["image_id"]])
        if problem:
            raise DatasetError(f"annotation {ann['id']} {problem}")
    return Dataset(annotation_file, root, data, digest)


def _read(path: Path) -> tuple[Path, dict, str]:
    """(annotation file, its JSON, the sha256 of its bytes)."""
    path = path.absolute()  # so that "<json dir>/.." means something for a bare file name
    if path.is_dir():
        path = _annotation_file(path)
    elif not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON (it is not UTF-8 text)") from e
    except OSError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror or e})") from e
    missing = [k for k in _KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        keys = "key" if len(missing) == 1 else "keys"
        raise DatasetError(f"{path} is not a COCO annotation file (it has no {_listing(missing, quote=True)} {keys})")
    _check_structure(data)
    return path, data, hashlib.sha256(raw).hexdigest()


def _annotation_file(folder: Path) -> Path:
    for pattern in _PATTERNS:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) > 1:
            names = _listing([str(p.relative_to(folder)) for p in found], shown=10)
            raise DatasetError(f"{folder} holds several annotation files ({names}), so pass the one to use")
        if found:
            return found[0]
    raise DatasetError(f"found no annotation file in {folder} (looked for {_listing(list(_PATTERNS), shown=4)})")


def _image_root(annotation_file: Path, data: dict, images: Path | None) -> Path:
    if images is not None:
        if not Path(images).is_dir():
            raise DatasetError(f"image folder {images} does not exist")
        return Path(images).absolute()
    here = annotation_file.parent
    stem = annotation_file.stem.removeprefix("instances_")
    candidates = [here, here / "images", here.parent / "images", here.parent / stem]
    first = data["images"][0]["file_name"]
    for root in candidates:
        if (root / first).is_file():
            return root
    return next((root for root in candidates[1:] if root.is_dir()), here)


def _check_structure(data: dict) -> None:
    for key in _KEYS:
        if not isinstance(data[key], list) or not all(isinstance(x, dict) for x in data[key]):
            raise DatasetError(f"the annotation file's {key!r} is not a list of objects")
    if not data["images"]:
        raise DatasetError("the annotation file lists no images")
    image_ids = _ids(data["images"], "image")
    category_ids = _ids(data["categories"], "category")
    _ids(data["annotations"], "annotation")
    for im in data["images"]:
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise DatasetError(f"image {im['id']} has no file_name")
        for key in ("height", "width"):
            im[key] = _size(im, key)
    for c in data["categories"]:
        if c.get("name") is not None and not isinstance(c["name"], str):
            raise DatasetError(f"category {c['id']} has a name that is not text")
    for ann in data["annotations"]:
        for kind, ids in (("image", image_ids), ("category", category_ids)):
            ref = ann.get(f"{kind}_id")
            if not _is_int(ref) or ref not in ids:
                raise DatasetError(f"annotation {ann['id']} refers to {kind} {ref!r}, which is not listed")
        if ann.get("iscrowd", 0) not in (0, 1):  # True and False compare equal to 1 and 0
            raise DatasetError(f"annotation {ann['id']} has iscrowd {ann['iscrowd']!r} (expected 0 or 1)")


def _ids(items: list[dict], kind: str) -> set[int]:
    seen: set[int] = set()
    for n, item in enumerate(items, 1):
        i = item.get("id")
        if not _is_int(i):
            raise DatasetError(f"{kind} number {n} in the list has the id {i!r}, which is not an integer")
        if i in seen:
            raise DatasetError(f"the {kind} id {i} is used twice")
        seen.add(i)
    return seen


def _size(im: dict, key: str) -> int | None:
    v = im.get(key)
    if v is None or (_is_int(v) and v > 0):
        return v
    if isinstance(v, float) and v.is_integer() and v > 0:  # some tools write 480.0
        return int(v)
    raise DatasetError(f"image {im['id']} has the {key} {v!r}, which is not a positive integer")


def _check_files(images: list[dict], root: Path) -> None:
    """Every image file exists and its size agrees with the JSON; missing sizes are filled in."""
    missing = [im["file_name"] for im in images if not (root / im["file_name"]).is_file()]
    if missing:
        names = _listing(missing)
        raise DatasetError(f"{len(missing)} of {len(images)} image files are missing from {root}: {names}")
    # About 0.2 ms an image: seconds only for large datasets (COCO's train2017: half a minute).
    for im in tracked(images, len(images), "reading image sizes") if len(images) >= 1000 else images:
        actual = _upright_size(root / im["file_name"])
        if im["height"] is None or im["width"] is None:
            im["height"], im["width"] = actual
        elif actual != (im["height"], im["width"]):
            raise DatasetError(_mismatch(im["id"], im["file_name"], actual, (im["height"], im["width"])))


def _upright_size(path: Path) -> tuple[int, int]:
    """(height, width) of the image as ``load_image`` returns it, from the file's header."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            # Image.getexif, not PNG's override, which decodes the whole file to look for a
            # late eXIf chunk; Dataset.image checks the decoded size again.
            orientation = Image.Image.getexif(im).get(_ORIENTATION, 1)
    except Image.DecompressionBombError as e:
        raise DatasetError(f"cannot read image {path}: it has too many pixels for Pillow") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # OSError: also not-an-image
        reason = getattr(e, "strerror", None) or "file is truncated, corrupt or not an image"
        raise DatasetError(f"cannot read image {path}: {reason.lower()}") from e
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _mismatch(image_id: int, name: str, actual: tuple[int, int], declared: tuple[int, int]) -> str:
    return (
        f"image {image_id} ({name}) is {actual[1]}x{actual[0]} pixels but the annotations say "
        f"{declared[1]}x{declared[0]}, so its masks would not line up"
    )


def _segmentation_problem(seg: object, height: int, width: int) -> str | None:
    """Why a segmentation cannot be made into a mask of this size, or None if it can."""
    if seg is None or seg == []:
        return "has no segmentation"
    if isinstance(seg, list):
        numbers = {int, float}
        for p in seg:
            if not (isinstance(p, list) and len(p) % 2 == 0 and {type(v) for v in p} <= numbers):
                return "has a polygon that is not a list of x, y numbers"
            if not all(map(math.isfinite, p)):  # JSON allows NaN and Infinity; pycocotools casts them to int
                return "has a polygon with a coordinate that is not finite"
        if all(len(p) < 6 for p in seg):
            return "has no polygon with 3 or more points"
        return None
    if not isinstance(seg, dict) or "counts" not in seg:
        return "has a segmentation that is neither polygons nor RLE"
    if seg.get("size") != [height, width]:
        return f"has an RLE of size {seg.get('size')!r} on an image of size [{height}, {width}] (height, width)"
    counts = seg["counts"]
    if isinstance(counts, str):
        counts = _rle_counts(counts)
    elif not (isinstance(counts, list) and all(_is_int(c) for c in counts)):
        counts = None
    # pycocotools rejects some wrong totals but decodes a short one into uninitialised memory.
    if counts is None or min(counts, default=0) < 0 or sum(counts) != height * width:
        return "has an RLE whose counts are malformed or do not add up to the image's pixels"
    return None


def _rle_counts(s: str) -> list[int] | None:
    """The run lengths in a compressed RLE string (pycocotools' ``rleFrString``), None if malformed.

    Each value is 5-bit groups, least significant first, in characters from '0'; bit 0x20 says
    another group follows and 0x10 of the last is the sign. From the fourth value on, each is a
    difference from the value two before it."""
    c = np.frombuffer(s.encode(), np.uint8).astype(np.int64) - 48
    if not s or not s.isascii() or c.min() < 0 or c.max() > 63 or c[-1] & 0x20:
        return None
    last = (c & 0x20) == 0
    starts = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
    k = np.arange(c.size) - np.repeat(starts, np.diff(np.append(starts, c.size)))  # group in its value
    if k.max() > 11:  # more than 60 bits
        return None
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    x = np.where(c[last] & 0x10, x - (1 << (5 * (k[last] + 1))), x)  # sign extension
    x[1::2], x[2::2] = np.cumsum(x[1::2]), np.cumsum(x[2::2])
    return x.tolist()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _listing(names: list[str], shown: int = 5, quote: bool = False) -> str:
    """``a, b and c``, or ``a, b, c, d, e and 3 more`` past ``shown``."""
    names = [repr(n) if quote else n for n in names]
    if len(names) > shown:
        return f"{', '.join(names[:shown])} and {len(names) - shown} more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
