"""Image files on disk, content-addressed per collection, written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageStore:
    """``<root>/<collection id>/images/<sha[:2]>/<sha>``: the same bytes are never stored twice."""

    def __init__(self, root: Path):
        self.root = root

    def collection_dir(self, collection_id: int) -> Path:
        return self.root / str(collection_id)

    def path(self, collection_id: int, sha256: str) -> Path:
        return self.collection_dir(collection_id) / "images" / sha256[:2] / sha256

    def put(self, collection_id: int, sha256: str, data: bytes) -> Path:
        path = self.path(collection_id, sha256)
        if not path.exists():
            atomic_write(path, data)
        return path

    def read(self, collection_id: int, sha256: str) -> bytes:
        return self.path(collection_id, sha256).read_bytes()

    def open_rgb(self, collection_id: int, sha256: str) -> Image.Image:
        """A stored image, decoded (it was validated on the way in)."""
        with Image.open(self.path(collection_id, sha256)) as img:
            return img.convert("RGB")

    def delete(self, collection_id: int, sha256: str) -> None:
        path = self.path(collection_id, sha256)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # only succeeds when empty
        except OSError:
            pass

    def delete_collection(self, collection_id: int) -> None:
        shutil.rmtree(self.collection_dir(collection_id), ignore_errors=True)

    def delete_collection_indexes(self, collection_id: int) -> None:
        shutil.rmtree(self.collection_dir(collection_id) / "indexes", ignore_errors=True)

    def stored_hashes(self, collection_id: int) -> set[str]:
        base = self.collection_dir(collection_id) / "images"
        if not base.exists():
            return set()
        return {p.name for p in base.glob("*/*") if p.is_file() and not p.name.startswith(".tmp-")}

    def remove_temp_files(self) -> int:
        """Leftovers of writes interrupted by a crash."""
        count = 0
        for tmp in self.root.glob("**/.tmp-*"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count

    def collection_ids_on_disk(self) -> set[int]:
        if not self.root.exists():
            return set()
        return {int(p.name) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()}
