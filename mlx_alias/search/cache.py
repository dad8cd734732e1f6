"""Image features computed once per (weights, image): kept in memory (LRU) and on disk.

Disk layout: ``<directory>/<weights fingerprint[:16]>/<image sha256>.safetensors``, one file per
image holding its levels ``level0..`` ([1, h, w, d], the model's output dtype) and metadata
(format, weights fingerprint, image key, dtype, shapes, sha256 of the tensor bytes), so that a
corrupt or stale entry is recognised on read and recomputed. ``<directory>/fingerprints.json``
memoises the weights' file hashes (``mlx_alias.digest``: keyed by inode and ctime too, so that
other weights copied over the same path with the same timestamps are hashed afresh).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from mlx_alias.digest import MemoUnwritable, file_digest
from mlx_alias.files import atomic_write
from mlx_alias.image import ImageError, load_image, preprocess_batch
from mlx_alias.model.sam3 import ImageFeatures, Sam3
from mlx_alias.model.weights import CONFIG, WEIGHTS, WeightsError
from mlx_alias.progress import tracked

FORMAT = "mlx_alias.image_features/1"
FINGERPRINTS = "fingerprints.json"
PROGRESS_AFTER = 8  # images to compute before a progress line is worth showing


class CacheError(ValueError):
    """A feature cache folder that cannot be written; the message is one sentence."""


def _unwritable(folder: Path, exc: Exception) -> CacheError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return CacheError(f"cannot write the feature cache in {folder} ({reason})")


class _BadEntry(Exception):
    """A disk entry that is corrupt or was written for other weights, image or model."""


@dataclass
class CacheStats:
    """Running totals; a ``get`` counts each distinct image once. ``computed`` includes the bad
    entries recomputed (``recomputed_bad``)."""

    hits_memory: int = 0
    hits_disk: int = 0
    computed: int = 0
    recomputed_bad: int = 0


def weights_fingerprint(weights_dir: Path, memo_dir: Path | None = None) -> str:
    """sha256 identifying a weights folder by the contents of its weights and config files.

    Each file's hash is memoised (``mlx_alias.digest.file_digest``), in
    ``memo_dir/fingerprints.json`` too when ``memo_dir`` is given, so that later runs skip it.
    """
    parts = []
    for name in (WEIGHTS, CONFIG):
        path = Path(weights_dir) / name
        if not path.is_file():
            raise WeightsError(f"{weights_dir} is not an mlx-alias weights folder: {name} is missing")
        memo = None if memo_dir is None else Path(memo_dir) / FINGERPRINTS
        try:
            parts.append(f"{name} {file_digest(path, memo)}\n")
        except MemoUnwritable as exc:
            raise _unwritable(memo_dir, exc) from exc
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def image_key(path: Path) -> str:
    """sha256 of an image file's bytes: the same picture under two names is one entry."""
    try:
        return file_digest(Path(path))
    except FileNotFoundError as exc:
        raise ImageError(f"cannot read image {path}: no such file") from exc
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {(exc.strerror or str(exc)).lower()}") from exc


def _checksum(levels: list[mx.array]) -> str:
    digest = hashlib.sha256()
    for level in levels:  # evaluated, row-contiguous arrays: their buffers are the tensor bytes
        digest.update(memoryview(level))
    return digest.hexdigest()


class FeatureCache:
    """``model.encode_image`` of image files, computed at most once per weights and image."""

    def __init__(self, model: Sam3, weights_dir: Path, directory: Path | None, memory_items: int = 64):
        if memory_items < 0:
            raise ValueError(f"memory_items must not be negative, got {memory_items}")
        self.model = model
        self.weights_dir = Path(weights_dir)
        self.memory_items = memory_items
        self.directory = None if directory is None else Path(directory)
        self.stats = CacheStats()
        self._memory: OrderedDict[str, list[mx.array]] = OrderedDict()
        self.fingerprint = weights_fingerprint(weights_dir, directory)
        self._folder = None if directory is None else Path(directory) / self.fingerprint[:16]
        if self._folder is not None:
            try:
                self._folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _unwritable(directory, exc) from exc
        # The graph of one blank image, never evaluated: MLX infers its shapes and dtype without
        # running the trunk, and its positions (image-independent) serve calls with no misses.
        size = model.cfg.vision.image_size
        template = model.encode_image(mx.zeros((1, size, size, 3)))
        self._shapes = [tuple(level.shape) for level in template.levels]
        self._dtype = template.levels[0].dtype
        self._positions = template.positions
        mx.eval(self._positions)

    def get(self, paths: list[Path], batch_size: int = 4) -> ImageFeatures:
        """Features of these images stacked in the given order: levels [N, h, w, d]."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        keys = [image_key(path) for path in paths]
        found: dict[str, list[mx.array]] = {}
        misses: dict[str, Path] = {}
        for path, key in zip(paths, keys):
            if key in found or key in misses:
                continue
            levels = self._from_memory(key)
            if levels is None:
                levels = self._from_disk(key)
            if levels is None:
                misses[key] = Path(path)
            else:
                found[key] = levels
        found.update(self._compute(misses, batch_size))
        if not keys:
            levels = [mx.zeros((0, *shape[1:]), dtype=self._dtype) for shape in self._shapes]
        else:
            levels = [mx.concatenate([found[key][i] for key in keys]) for i in range(len(self._shapes))]
        return ImageFeatures(levels, list(self._positions))

    def entry_path(self, key: str) -> Path | None:
        """Where the disk entry of an image key lives (None without a cache folder)."""
        return None if self._folder is None else self._folder / f"{key}.safetensors"

    def _from_memory(self, key: str) -> list[mx.array] | None:
        levels = self._memory.get(key)
        if levels is not None:
            self._memory.move_to_end(key)
            self.stats.hits_memory += 1
        return levels

    def _remember(self, key: str, levels: list[mx.array]) -> None:
        self._memory[key] = levels
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _from_disk(self, key: str) -> list[mx.array] | None:
        path = self.entry_path(key)
        if path is None or not path.is_file():
            return None
        try:
            levels = self._read(path, key)
        except _BadEntry:
            with contextlib.suppress(OSError):
                path.unlink()
            self.stats.recomputed_bad += 1
            return None
        self.stats.hits_disk += 1
        self._remember(key, levels)
        return levels

    def _metadata(self, key: str, checksum: str) -> dict[str, str]:
        return {
            "format": FORMAT,
            "weights": self.fingerprint,
            "image": key,
            "dtype": str(self._dtype).rsplit(".", 1)[-1],
            "shapes": json.dumps(self._shapes),
            "sha256": checksum,
        }

    def _read(self, path: Path, key: str) -> list[mx.array]:
        try:
            arrays, metadata = mx.load(str(path), format="safetensors", return_metadata=True)
            mx.eval(arrays)  # loading is lazy: read now, inside the try
        except (RuntimeError, ValueError, OSError) as exc:
            raise _BadEntry from exc
        names = [f"level{i}" for i in range(len(self._shapes))]
        if sorted(arrays) != sorted(names):
            raise _BadEntry
        levels = [arrays[name] for name in names]
        if any(tuple(a.shape) != s or a.dtype != self._dtype for a, s in zip(levels, self._shapes)):
            raise _BadEntry
        if metadata != self._metadata(key, _checksum(levels)):
            raise _BadEntry
        return levels

    def _write(self, key: str, levels: list[mx.array]) -> None:
        path = self.entry_path(key)
        if path is None:
            return
        tensors = {f"level{i}": level for i, level in enumerate(levels)}
        metadata = self._metadata(key, _checksum(levels))

        def write(tmp: str) -> None:
            # A file object: given a name, MLX would append ".safetensors" to the temporary one.
            with open(tmp, "wb") as f:
                mx.save_safetensors(f, tensors, metadata=metadata)

        try:
            atomic_write(path, write)
        except (OSError, RuntimeError) as exc:  # MLX reports a failed write as a RuntimeError
            raise _unwritable(self._folder, exc) from exc

    def _compute(self, misses: dict[str, Path], batch_size: int) -> dict[str, list[mx.array]]:
        items = list(misses.items())
        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        if len(items) > PROGRESS_AFTER:
            batches = tracked(batches, len(batches), f"image features ({len(items)} images)")
        size = self.model.cfg.vision.image_size
        out = {}
        for batch in batches:
            # Every image of the batch is decoded before the trunk runs: a bad one fails first.
            pixels = mx.array(preprocess_batch([load_image(path) for _, path in batch], size))
            features = self.model.encode_image(pixels)
            # contiguous() copies each image out: a view would pin the whole batch in memory.
            per_image = [[mx.contiguous(level[i : i + 1]) for level in features.levels] for i in range(len(batch))]
            mx.eval(per_image)
            for (key, _), levels in zip(batch, per_image):
                self._write(key, levels)
                self._remember(key, levels)
                self.stats.computed += 1
                out[key] = levels
        return out
