"""Server-side import of a directory tree under the import root: which files, which categories, which captions.

The conventions are the web page's for a dropped folder:

- every file with an image suffix is an image; names starting with "." (files and folders) are skipped;
- the folder an image sits in gives its category (the folder's name, not its path), except the import
  root itself (a server setting, not one of the user's folders);
- a sidecar text file with the image's stem (``cat1.txt`` beside ``cat1.jpg``) holds its captions, one
  per line (blank lines ignored, UTF-8);
- linked folders are not entered; a linked file is read only if it resolves inside the import root
  (checked when it is read, as every path is).
"""

from __future__ import annotations

import os
from pathlib import Path

from service.errors import Invalid, NotFound, TooLarge
from service.manifest import PlannedFile, resolve_under_root

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_FILE_BYTES = 256 * 1024
MAX_TREE_FILES = 200_000  # one job; a bigger tree is imported folder by folder


def tree_files(root: Path | None, directory: str, folder_categories: bool = True) -> list[PlannedFile]:
    """Every image file under ``directory`` (sorted, folder by folder), with its category and caption file."""
    top = resolve_under_root(root, directory)
    if not top.is_dir():
        raise NotFound("directory_not_found", f"directory {directory!r} not found")
    assert root is not None  # resolve_under_root refused otherwise
    base = root.resolve()
    planned: list[PlannedFile] = []
    for folder, subfolders, names in os.walk(top):  # followlinks=False: linked folders are not entered
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        here = Path(folder)
        visible = {name for name in names if not name.startswith(".")}
        category = here.name if folder_categories and here != base else None
        for name in sorted(visible):
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            sidecar = Path(name).stem + CAPTION_SUFFIX
            planned.append(PlannedFile(
                path=(here / name).relative_to(base).as_posix(), file=here / name,
                metadata={"category": category} if category else {},
                caption_file=here / sidecar if sidecar in visible else None,
            ))
            if len(planned) > MAX_TREE_FILES:
                raise TooLarge("too_many_files", f"over {MAX_TREE_FILES} images under {directory!r}; "
                                                 "import its folders one at a time")
    if not planned:
        raise Invalid("no_images", f"no image files under {directory!r} "
                                   f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return planned


def read_caption_file(path: Path) -> list[str]:
    """A sidecar's captions, one per line. ValueError (with a reason a client may read) when unusable."""
    if path.stat().st_size > MAX_CAPTION_FILE_BYTES:
        raise ValueError(f"the caption file is over {MAX_CAPTION_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("the caption file is not UTF-8 text") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]
