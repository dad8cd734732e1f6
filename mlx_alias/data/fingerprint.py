"""What a dataset's content is, by digest: the annotation file's bytes and every image file's,
so that a run can tell whether it is resumed on the same data, wherever the files now lie."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mlx_alias.digest import file_digest
from mlx_alias.image import ImageError
from mlx_alias.progress import tracked

from .coco import Dataset

PROGRESS_AFTER = 1000  # images to hash before a progress line is worth showing
SHOWN = 5  # changed image names listed in a message


@dataclass(frozen=True)
class DatasetFingerprint:
    annotations: str  # sha256 of the annotation file's bytes
    images: dict[str, str]  # file name (relative to the image root) -> sha256 of the file

    @property
    def images_sha256(self) -> str:
        """One digest of all images: their names and contents, in name order."""
        lines = "".join(f"{name}\0{digest}\n" for name, digest in sorted(self.images.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def summary(self) -> dict:
        return {"annotations_sha256": self.annotations, "images_sha256": self.images_sha256, "images": len(self.images)}

    def differences(self, before: DatasetFingerprint) -> list[str]:
        """What changed since ``before``, one clause each (empty when nothing did)."""
        found = []
        if self.annotations != before.annotations:
            found.append("the annotation file's contents differ")
        changed = sorted(n for n in self.images.keys() & before.images.keys() if self.images[n] != before.images[n])
        added = sorted(self.images.keys() - before.images.keys())
        removed = sorted(before.images.keys() - self.images.keys())
        for kind, names in (("changed", changed), ("added", added), ("removed", removed)):
            if names:
                more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
                files = "image file" if len(names) == 1 else "image files"
                found.append(f"{len(names)} {files} {kind} ({', '.join(names[:SHOWN])}{more})")
        return found


def fingerprint_dataset(dataset: Dataset) -> DatasetFingerprint:
    """Hash every image the annotation file lists (each file once per process while unchanged)."""
    infos = list(dataset.images.values())
    if len(infos) >= PROGRESS_AFTER:
        infos = tracked(infos, len(infos), "hashing the dataset's images")
    images = {}
    for info in infos:
        try:
            images[str(info.path.relative_to(dataset.image_root))] = file_digest(info.path)
        except OSError as exc:
            raise ImageError(f"cannot read image {info.path}: {(exc.strerror or str(exc)).lower()}") from exc
    return DatasetFingerprint(dataset.annotations_sha256, images)
