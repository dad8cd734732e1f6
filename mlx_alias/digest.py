"""Content digests of files (sha256), memoised without ever trusting a file's timestamps alone.

A memo is keyed by what identifies one version of one file: device, inode, size, mtime and
ctime. Copying other contents over a file while keeping its size and mtime (``cp -p``,
``rsync -t``, tar, container layers) cannot keep its ctime, which only the kernel sets. A file
changed within the timestamp granularity of its last change could still show the same ctime,
so a digest is only memoised once the file's ctime is ``SETTLED_NS`` old (the "racy" case git
handles the same way); until then it is hashed at every call.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .files import atomic_write_bytes

_CHUNK = 8 << 20
# Older than the coarsest ctime granularity of common file systems (1-10 ms) by a wide margin.
SETTLED_NS = 2 * 10**9

_MEMO: dict[str, str] = {}  # in-process memo, by ``version_key``


class MemoUnwritable(OSError):
    """The on-disk memo could not be written (the digest itself was computed)."""


def hash_file(path: Path) -> str:
    """sha256 of a file read in chunks (the full-size weights are 3.4 GB)."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def version_key(path: Path, st: os.stat_result) -> str:
    return f"{path}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _read_memo(memo: Path) -> dict[str, str]:
    try:
        data = json.loads(memo.read_text())
    except (OSError, ValueError):  # missing or damaged: it only costs a re-hash
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str) and len(v) == 64} if isinstance(data, dict) else {}


def file_digest(path: Path, memo: Path | None = None) -> str:
    """sha256 of ``path``'s contents, memoised in-process and, when ``memo`` names a JSON file,
    on disk across processes. Raises OSError if the file cannot be read (or changes while it is
    hashed); an unwritable ``memo`` raises ``MemoUnwritable``."""
    path = Path(path).resolve()
    before = path.stat()
    key = version_key(path, before)
    digest = _MEMO.get(key) or (_read_memo(memo).get(key) if memo is not None else None)
    if digest is not None:
        _MEMO[key] = digest
        return digest
    digest = hash_file(path)
    after = path.stat()
    if version_key(path, after) != key:
        raise OSError(f"{path} changed while it was read; try again once it is written")
    if time.time_ns() - after.st_ctime_ns < SETTLED_NS:
        return digest  # changed too recently to be told apart by its timestamps: not memoised
    _MEMO[key] = digest
    if memo is not None:
        # Re-read just before writing: another process may have added entries meanwhile.
        entries = {k: v for k, v in _read_memo(memo).items() if not k.startswith(f"{path}|")}
        entries[key] = digest
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(memo, json.dumps(entries, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise MemoUnwritable(exc.errno, exc.strerror or str(exc)) from exc
    return digest
