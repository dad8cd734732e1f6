"""The image feature cache: exact features, memory and disk hits, and recovery from bad entries."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from mlx_alias import digest
from mlx_alias.image import ImageError, load_image, preprocess
from mlx_alias.model.weights import load_model
from mlx_alias.search import cache as cache_module
from mlx_alias.search.cache import CacheError, FeatureCache, image_key, weights_fingerprint


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(24, 32, 3), (40, 20, 3), (16, 16, 3)]):
        paths.append(root / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def direct(mlx_model, images) -> list[list[mx.array]]:
    """Each image's levels from model.encode_image alone, [1, h, w, d] each."""
    size = mlx_model.cfg.vision.image_size
    out = []
    for path in images:
        features = mlx_model.encode_image(mx.array(preprocess(load_image(path), size))[None])
        mx.eval(features.levels)
        out.append(features.levels)
    return out


def assert_levels(features, expected: list[list[mx.array]]) -> None:
    assert len(features.levels) == len(expected[0])
    for i, level in enumerate(features.levels):
        assert mx.array_equal(level, mx.concatenate([e[i] for e in expected])).item()


def counts(cache: FeatureCache) -> tuple[int, int, int, int]:
    s = cache.stats
    return s.hits_memory, s.hits_disk, s.computed, s.recomputed_bad


def entries(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != cache_module.FINGERPRINTS)


def test_features_exact_in_order_with_memory_and_disk_hits(mlx_model, mlx_weights, images, direct, tmp_path):
    a, b, c = images
    cache = FeatureCache(mlx_model, mlx_weights, tmp_path)
    features = cache.get([b, a, b, c, a], batch_size=2)
    assert_levels(features, [direct[1], direct[0], direct[1], direct[2], direct[0]])
    assert all(level.dtype == mlx_model.dtype for level in features.levels)
    size = mlx_model.cfg.vision.image_size
    reference = mlx_model.encode_image(mx.zeros((1, size, size, 3)))
    assert all(mx.array_equal(p, q).item() for p, q in zip(features.positions, reference.positions))
    assert counts(cache) == (0, 0, 3, 0)
    assert len(entries(tmp_path)) == 3

    assert_levels(cache.get([c, a]), [direct[2], direct[0]])
    assert counts(cache) == (2, 0, 3, 0)

    again = FeatureCache(mlx_model, mlx_weights, tmp_path)  # a new run: disk only
    assert_levels(again.get([a, b, c]), direct)
    assert counts(again) == (0, 3, 0, 0)
    assert again.get([]).levels[0].shape == (0, 64, 64, mlx_model.cfg.detector.d_model)


def test_entry_format(mlx_model, mlx_weights, images, direct, tmp_path):
    cache = FeatureCache(mlx_model, mlx_weights, tmp_path)
    cache.get(images[:1])
    key = image_key(images[0])
    path = cache.entry_path(key)
    assert path == tmp_path / cache.fingerprint[:16] / f"{key}.safetensors"
    arrays, meta = mx.load(str(path), return_metadata=True)
    assert sorted(arrays) == ["level0", "level1", "level2"]
    assert meta["weights"] == cache.fingerprint and meta["image"] == key and meta["dtype"] == "float32"
    d = mlx_model.cfg.detector.d_model
    assert json.loads(meta["shapes"]) == [[1, 64, 64, d], [1, 32, 32, d], [1, 16, 16, d]]
    data = b"".join(np.asarray(arrays[f"level{i}"]).tobytes() for i in range(3))
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()


def test_same_image_under_two_names_is_one_entry(mlx_model, mlx_weights, images, direct, tmp_path):
    twin = tmp_path / "renamed.png"
    shutil.copy(images[0], twin)
    cache = FeatureCache(mlx_model, mlx_weights, tmp_path / "cache")
    assert_levels(cache.get([images[0], twin]), [direct[0], direct[0]])
    assert counts(cache) == (0, 0, 1, 0)
    assert len(entries(tmp_path / "cache")) == 1


def test_memory_only_and_lru_bound(mlx_model, mlx_weights, images, direct, tmp_path):
    cache = FeatureCache(mlx_model, mlx_weights, None, memory_items=2)
    cache.get(images)
    assert_levels(cache.get(images[1:]), direct[1:])  # the two most recent stayed
    assert counts(cache) == (2, 0, 3, 0)
    assert_levels(cache.get(images[:1]), direct[:1])  # evicted, and no disk: computed again
    assert counts(cache) == (2, 0, 4, 0)
    assert list(tmp_path.iterdir()) == []


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_tensor_byte(data: bytes) -> bytes:
    return data[:-1000] + bytes([data[-1000] ^ 0x5A]) + data[-999:]


def _bad_header(data: bytes) -> bytes:
    return data[:8] + b"\xff" * 16 + data[24:]


@pytest.mark.parametrize(
    "corrupt",
    [_truncate, _flip_tensor_byte, _bad_header, lambda _: b"garbage" * 50, lambda _: b""],
    ids=["truncated", "flipped", "header", "garbage", "empty"],
)
def test_corrupt_entry_is_recomputed(mlx_model, mlx_weights, images, direct, tmp_path, corrupt):
    FeatureCache(mlx_model, mlx_weights, tmp_path).get(images[:1])
    [path] = entries(tmp_path)
    path.write_bytes(corrupt(path.read_bytes()))
    cache = FeatureCache(mlx_model, mlx_weights, tmp_path)
    assert_levels(cache.get(images[:1]), direct[:1])
    assert counts(cache) == (0, 0, 1, 1)
    fresh = FeatureCache(mlx_model, mlx_weights, tmp_path)  # the entry was rewritten whole
    assert_levels(fresh.get(images[:1]), direct[:1])
    assert counts(fresh) == (0, 1, 0, 0)


def _restale(arrays: dict, meta: dict, field: str) -> None:
    if field == "weights":
        meta["weights"] = hashlib.sha256(b"other weights").hexdigest()
    elif field == "image":
        meta["image"] = hashlib.sha256(b"other image").hexdigest()
    elif field == "dtype":
        for name in arrays:
            arrays[name] = arrays[name].astype(mx.float16)
        meta["dtype"] = "float16"
    else:
        arrays["level0"] = arrays["level0"][:, :32]
        meta["shapes"] = json.dumps([list(a.shape) for a in arrays.values()])
    # A consistent checksum: only the staleness itself can give the entry away.
    data = b"".join(np.asarray(arrays[f"level{i}"]).tobytes() for i in range(3))
    meta["sha256"] = hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("field", ["weights", "image", "dtype", "shape"])
def test_stale_entry_is_not_used(mlx_model, mlx_weights, images, direct, tmp_path, field):
    cache = FeatureCache(mlx_model, mlx_weights, tmp_path)
    cache.get(images[:1])
    path = cache.entry_path(image_key(images[0]))
    arrays, meta = mx.load(str(path), return_metadata=True)
    arrays = {f"level{i}": arrays[f"level{i}"] for i in range(3)}
    _restale(arrays, meta, field)
    mx.save_safetensors(str(path), arrays, metadata=meta)
    cache = FeatureCache(mlx_model, mlx_weights, tmp_path)
    assert_levels(cache.get(images[:1]), direct[:1])
    assert counts(cache) == (0, 0, 1, 1)
    assert mx.load(str(path), return_metadata=True)[1]["weights"] == cache.fingerprint


def test_other_weights_get_their_own_entries(mlx_model, mlx_weights, images, direct, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(mlx_weights, other)
    tensors, meta = mx.load(str(other / "model.safetensors"), return_metadata=True)
    name = "vision_encoder.neck.fpn_layers.0.proj2.bias"
    tensors[name] = tensors[name] + 0.5
    mx.save_safetensors(str(other / "model.safetensors"), tensors, metadata=meta)
    other_model = load_model(other)

    first = FeatureCache(mlx_model, mlx_weights, tmp_path / "cache")
    first.get(images[:1])
    second = FeatureCache(other_model, other, tmp_path / "cache")
    assert second.fingerprint != first.fingerprint
    features = second.get(images[:1])
    assert counts(second) == (0, 0, 1, 0)
    assert not mx.array_equal(features.levels[0], direct[0][0]).item()
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert folders == sorted([first.fingerprint[:16], second.fingerprint[:16]])
    assert len(entries(tmp_path / "cache")) == 2
    again = FeatureCache(mlx_model, mlx_weights, tmp_path / "cache")
    assert_levels(again.get(images[:1]), direct[:1])
    assert counts(again) == (0, 1, 0, 0)


@pytest.fixture
def settled_at_once(monkeypatch):
    """Memoise digests of files written a moment ago (``digest.SETTLED_NS`` 0), starting from
    an empty in-process memo; returns ``forget()``, which empties it again (a new process)."""
    monkeypatch.setattr(digest, "SETTLED_NS", 0)
    forget = lambda: monkeypatch.setattr(digest, "_MEMO", {})  # noqa: E731
    forget()
    return forget


def test_fingerprint_is_memoised_on_disk(mlx_weights, tmp_path, monkeypatch, settled_at_once):
    weights = tmp_path / "weights"
    shutil.copytree(mlx_weights, weights)
    calls = []
    hash_file = digest.hash_file
    monkeypatch.setattr(digest, "hash_file", lambda path: calls.append(path.name) or hash_file(path))
    forget = settled_at_once

    digest_ = weights_fingerprint(weights, tmp_path / "memo")
    assert sorted(calls) == ["config.json", "model.safetensors"]
    assert weights_fingerprint(weights, tmp_path / "memo") == digest_  # in-process memo
    forget()
    assert weights_fingerprint(weights, tmp_path / "memo") == digest_  # disk memo
    assert len(calls) == 2

    stat = (weights / "config.json").stat()
    os.utime(weights / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    forget()
    assert weights_fingerprint(weights, tmp_path / "memo") == digest_  # same contents
    assert calls[2:] == ["config.json"]
    memo = json.loads((tmp_path / "memo" / cache_module.FINGERPRINTS).read_text())
    assert len(memo) == 2  # the touched file's old entry was replaced

    (weights / "config.json").write_text((weights / "config.json").read_text() + "\n")
    assert weights_fingerprint(weights, tmp_path / "memo") != digest_


def test_other_weights_copied_over_with_the_same_timestamps(mlx_weights, search_weights, tmp_path, settled_at_once):
    """``cp -p``, ``rsync -t``, tar: other weights of the same size at the same path with the same
    mtime. Memoised by path, size and mtime, the old digest, and so the old image features and a
    resume's weights check, were used for them."""
    weights, other = tmp_path / "weights", search_weights / "mlx"
    shutil.copytree(mlx_weights, weights)
    assert weights_fingerprint(weights, tmp_path / "memo") != weights_fingerprint(other)
    for name in ("model.safetensors", "config.json"):
        stat = (weights / name).stat()
        assert (other / name).stat().st_size == stat.st_size
        time.sleep(0.05)  # past the file system's timestamp granularity, as any real copy is
        (weights / name).write_bytes((other / name).read_bytes())
        os.utime(weights / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert (weights / name).stat().st_mtime_ns == stat.st_mtime_ns
    settled_at_once()  # a new process, with the disk memo of the old weights
    assert weights_fingerprint(weights, tmp_path / "memo") == weights_fingerprint(other)


def test_a_file_changed_a_moment_ago_is_not_memoised(tmp_path, monkeypatch):
    """Within the timestamp granularity a rewrite could keep even the ctime: such a file is
    hashed again at every call until it has settled."""
    monkeypatch.setattr(digest, "_MEMO", {})
    path = tmp_path / "file"
    path.write_bytes(b"a" * 100)
    first = digest.file_digest(path, tmp_path / "memo.json")
    assert first == hashlib.sha256(b"a" * 100).hexdigest()
    assert not digest._MEMO and not (tmp_path / "memo.json").exists()
    monkeypatch.setattr(digest, "SETTLED_NS", 0)
    assert digest.file_digest(path, tmp_path / "memo.json") == first
    assert list(json.loads((tmp_path / "memo.json").read_text()).values()) == [first]


def test_unreadable_image_leaves_no_entry(mlx_model, mlx_weights, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 20)
    cache = FeatureCache(mlx_model, mlx_weights, tmp_path / "cache")
    with pytest.raises(ImageError, match="bad.png"):
        cache.get([images[0], bad])
    with pytest.raises(ImageError, match="no such file"):
        cache.get([tmp_path / "missing.png"])
    assert entries(tmp_path / "cache") == []
    assert counts(cache) == (0, 0, 0, 0)


def test_interrupted_write_leaves_no_entry(mlx_model, mlx_weights, images, tmp_path, monkeypatch):
    def killed(file, arrays, metadata=None):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(mx, "save_safetensors", killed)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(mlx_model, mlx_weights, tmp_path).get(images[:1])
    assert entries(tmp_path) == []


def test_bfloat16_weights_round_trip(mlx_weights, images, tmp_path):
    weights = tmp_path / "bf16"
    shutil.copytree(mlx_weights, weights)
    tensors, meta = mx.load(str(weights / "model.safetensors"), return_metadata=True)
    tensors = {k: v.astype(mx.bfloat16) for k, v in tensors.items()}
    mx.save_safetensors(str(weights / "model.safetensors"), tensors, metadata=meta)
    model = load_model(weights)
    computed = FeatureCache(model, weights, tmp_path / "cache").get(images[:1])
    assert computed.levels[0].dtype == mx.bfloat16
    cache = FeatureCache(model, weights, tmp_path / "cache")
    loaded = cache.get(images[:1])
    assert counts(cache) == (0, 1, 0, 0)
    assert all(mx.array_equal(p, q).item() for p, q in zip(computed.levels, loaded.levels))
    path = cache.entry_path(image_key(images[0]))
    assert mx.load(str(path), return_metadata=True)[1]["dtype"] == "bfloat16"


def test_unwritable_cache_folder(mlx_model, mlx_weights, tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(CacheError, match="cannot write the feature cache"):
        FeatureCache(mlx_model, mlx_weights, tmp_path / "file" / "cache")
