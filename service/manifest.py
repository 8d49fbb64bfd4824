"""Server-side imports: the import root's path rules, and manifests (a JSON-lines file of `path` plus an
upload's metadata fields, or a CSV one).

Both the manifest and every image it names must resolve (symlinks followed) inside the configured
import root; anything else is refused before a single file is read. The import job reads the files
later and checks each path against the root again then (``service.import_jobs``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.errors import Forbidden, Invalid, NotFound, TooLarge
from service.schemas import ImageMetadata

MAX_MANIFEST_BYTES = 50 * 1024 * 1024


@dataclass
class PlannedFile:
    """One file an import will read: what to call it, where it is, what it says about itself."""

    path: str  # as reported (the manifest's path, or the path relative to the import root)
    file: Path
    metadata: dict[str, Any] = field(default_factory=dict)  # an upload's metadata fields
    caption_file: Path | None = None  # a sidecar with one caption per line


def inside(root: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def resolve_under_root(root: Path | None, raw: str, base: Path | None = None) -> Path:
    if root is None:
        raise Forbidden("import_disabled", "server-side import is disabled: no import root is configured")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (base or root) / path
    if not inside(root, path):
        raise Forbidden("outside_import_root", f"{raw!r} is outside the allowed import root")
    return path.resolve()


def _split_captions(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    # CSV cells carry several captions separated by '|'.
    return [part for part in str(value).split("|")]


def parse_manifest(text: str, suffix: str) -> list[dict]:
    rows: list[dict] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise Invalid("bad_manifest", "CSV manifest needs a header with a 'path' column")
        for row in reader:
            rows.append({
                "path": row.get("path"),
                "captions": _split_captions(row.get("captions") or row.get("caption")),
                "category": row.get("category") or None,
                "attributes": _split_captions(row.get("attributes")),
            })
        return rows
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise Invalid("bad_manifest", f"manifest line {number} is not JSON: {exc.msg}") from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise Invalid("bad_manifest", f"manifest line {number} needs a string 'path'")
        fields = {key: value for key, value in entry.items() if key != "path"}
        for key in ("captions", "attributes"):  # a single string is a one-item list ('|'-separated for attributes)
            if isinstance(fields.get(key), str):
                fields[key] = [fields[key]] if key == "captions" else _split_captions(fields[key])
        try:
            metadata = ImageMetadata.model_validate(fields)  # the upload's vocabulary and rules
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise Invalid("bad_manifest", f"manifest line {number}: {where}: {first['msg']}") from exc
        rows.append({"path": entry["path"], "captions": metadata.all_captions, "category": metadata.category,
                     "attributes": metadata.attributes, "meta": metadata.meta})
    return rows


def manifest_files(root: Path | None, manifest: str) -> list[PlannedFile]:
    """The files a manifest lists, with their metadata; every line and every path is checked, no image is read."""
    path = resolve_under_root(root, manifest)
    if path.suffix not in (".jsonl", ".csv"):
        raise Invalid("bad_manifest", "manifest must be a .jsonl or .csv file")
    if not path.is_file():
        raise NotFound("manifest_not_found", f"manifest {manifest!r} not found")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise TooLarge("manifest_too_large", f"manifest is over {MAX_MANIFEST_BYTES} bytes")
    rows = parse_manifest(path.read_text(encoding="utf-8"), path.suffix)
    if not rows:
        raise Invalid("bad_manifest", "manifest lists no images")
    # Check every path before any is read, so a bad entry refuses the whole import.
    return [
        PlannedFile(path=row["path"], file=resolve_under_root(root, row["path"] or "", base=path.parent),
                    metadata={key: row[key] for key in ("captions", "category", "attributes", "meta")
                              if row.get(key) is not None})
        for row in rows
    ]
