"""`prompt-adapters serve | worker | ingest | import | search | tune | migrate | reembed | keys`.

Every setting can come from the environment (PAS_*) or from the flags below. `ingest` and `reembed`
work on the data directory directly: run them while no server uses the same directory. `search`
asks the server that holds the data directory (or --url) and works locally when none does; `tune`
and `import` always ask a server (their jobs run there).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli_keys import add_keys_commands, check_serving_exposure, run_keys_command
from service.data_dir import named_data_dir
from service.server_client import ServerClient, ServerError
from service.vocabulary import ACTIVE, TERMINAL_STATES, JobState

if TYPE_CHECKING:  # the settings class loads pydantic: a search that asks a server does without it
    from service.config import Settings

JOB_POLL_S = 0.5
SETTING_FLAGS = {
    "data_dir": "--data-dir",
    "database_url": "--database-url",
    "backbone_model": "--backbone-model",
    "backbone_pretrained": "--backbone-pretrained",
    "device": "--device",
    "precision": "--precision",
    "batch_size": "--batch-size",
    "max_upload_bytes": "--max-upload-bytes",
    "max_image_pixels": "--max-image-pixels",
    "import_root": "--import-root",
    "ann_threshold": "--ann-threshold",
    "host": "--host",
    "port": "--port",
}


def settings_from(args: argparse.Namespace) -> Settings:
    from service.config import Settings

    names = [*SETTING_FLAGS, "auth_disabled"]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return Settings(**overrides)


SETTING_HELP = "(a setting)"  # replaced by the setting's description when --help is printed


class SettingsHelp(argparse.HelpFormatter):
    """A setting flag's help is its field's description, read only when help is printed: the settings class
    loads pydantic, which a search that asks a server does without. Its values are checked by Settings too."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help == SETTING_HELP:
            from service.config import Settings

            return (Settings.model_fields[action.dest].description or "").replace("%", "%%")
        return super()._get_help_string(action)


class CliParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", SettingsHelp)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    common = CliParser(add_help=False)
    for name, flag in SETTING_FLAGS.items():
        common.add_argument(flag, dest=name, default=None, help=SETTING_HELP)
    common.add_argument("--no-auth", dest="auth_disabled", action="store_const", const=True, default=None,
                        help="serve without API keys even on a non-loopback address (PAS_AUTH_DISABLED)")

    parser = CliParser(prog="prompt-adapters", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CliParser)
    sub.add_parser("serve", parents=[common], help="run the HTTP server")
    sub.add_parser("worker", parents=[common],
                   help="run queued jobs of a scaled-out deployment (PAS_SCALE_OUT=1, PostgreSQL)")
    sub.add_parser("migrate", parents=[common], help="apply database migrations and exit")
    ingest = sub.add_parser("ingest", parents=[common], help="add a directory of images to a collection")
    ingest.add_argument("directory", type=Path)
    ingest.add_argument("--collection", required=True, help="collection name (created if missing)")
    ingest.add_argument("--captions", type=Path, help=".jsonl or .csv of (path, captions, category, attributes)")
    search = sub.add_parser("search", parents=[common], help="search a collection by text")
    search.add_argument("collection", help="collection id or name")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--adapter", default=ACTIVE)
    tune = sub.add_parser("tune", parents=[common], help="start a tuning job on the running server")
    tune.add_argument("collection", help="collection id or name")
    tune.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    tune.add_argument("--config", type=json.loads, default=None,
                      help='tuning settings as a JSON object (the API\'s TuningConfig), e.g. \'{"epochs": 5}\'')
    imports = sub.add_parser("import", parents=[common],
                             help="import a manifest or a directory tree under the server's import root, as a "
                                  "job on the running server")
    imports.add_argument("collection", help="collection id or name")
    source = imports.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help=".jsonl or .csv manifest (path on the server, under its import root)")
    source.add_argument("--directory", help="directory tree (path on the server, under its import root): folder "
                                            "names become categories, NAME.txt beside NAME.jpg its captions")
    imports.add_argument("--no-folder-categories", dest="folder_categories", action="store_false",
                         help="with --directory: leave categories unset")
    imports.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    for command in (search, tune, imports):
        command.add_argument("--url", help="the server to ask (default: the one holding the data directory)")
        command.add_argument("--key", default=os.environ.get("PAS_API_KEY"),
                             help="API key for that server (default: $PAS_API_KEY)")
    sub.add_parser("reembed", parents=[common], help="re-encode every image with the configured backbone")
    add_keys_commands(sub, common)
    return parser


def cmd_serve(settings: Settings) -> None:
    import uvicorn

    from service.app import create_app
    from service.context import load_configured_backbone
    from service.http_limits import uvicorn_options

    check_serving_exposure(settings)
    # Load before serving, so a bad backbone setting ends with one clear line, not a traceback.
    backbone = load_configured_backbone(settings)
    uvicorn.run(create_app(settings, backbone), host=settings.host, port=settings.port, **uvicorn_options(settings))


def cmd_worker(settings: Settings) -> int:
    from service.data_lock import share_data_dir
    from service.job_queue import run_worker

    if not settings.scale_out:
        print("error: `prompt-adapters worker` runs the jobs of a scaled-out deployment: set PAS_SCALE_OUT=1 and a "
              "PostgreSQL PAS_DATABASE_URL (an embedded `prompt-adapters serve` runs its own jobs)", file=sys.stderr)
        return 2
    with share_data_dir(settings.data_dir, "a worker"):
        run_worker(settings)
    return 0


def cmd_migrate(settings: Settings) -> None:
    from service.db import make_engine, migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(make_engine(settings.resolved_database_url))
    print("database is at the newest schema revision")


def caption_table(path: Path | None) -> dict[str, dict]:
    from service.manifest import parse_manifest

    if path is None:
        return {}
    rows = parse_manifest(path.read_text(encoding="utf-8"), path.suffix)
    return {Path(row["path"]).as_posix(): row for row in rows}


def cmd_ingest(settings: Settings, directory: Path, collection_name: str, captions: Path | None) -> int:
    from sqlalchemy import select

    from service.collections import create_collection
    from service.context import ServiceContext
    from service.import_tree import IMAGE_SUFFIXES
    from service.ingest import IngestItem, ingest
    from service.models import Collection

    if not directory.is_dir():
        print(f"error: {directory} is not a directory", file=sys.stderr)
        return 2
    table = caption_table(captions)
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    ctx = ServiceContext(settings)
    ctx.recover()
    with ctx.session() as session:
        collection = session.scalar(select(Collection).where(Collection.name == collection_name))
    if collection is None:
        collection = create_collection(ctx, collection_name, None)
    accepted = duplicates = rejected = 0
    chunk = settings.batch_size * 4
    from tqdm import tqdm  # here, not at the top: a search asking the server starts faster without it

    with tqdm(total=len(files), unit="img", desc=f"ingest into {collection_name}") as bar:
        for start in range(0, len(files), chunk):
            items = []
            for path in files[start : start + chunk]:
                rel = path.relative_to(directory).as_posix()
                row = table.get(rel) or table.get(path.name) or {}
                items.append(IngestItem(filename=rel, data=path.read_bytes(), captions=row.get("captions", []),
                                        category=row.get("category"), attributes=row.get("attributes", [])))
            result = ingest(ctx, collection.id, items)
            accepted += sum(not a.duplicate for a in result.accepted)
            duplicates += sum(a.duplicate for a in result.accepted)
            rejected += len(result.rejected)
            for r in result.rejected:
                tqdm.write(f"rejected {r.filename}: {r.reason}")
            bar.update(len(items))
    print(f"collection {collection.name} (id {collection.id}): {accepted} added, {duplicates} duplicates, "
          f"{rejected} rejected")
    ctx.close()
    return 0


def cmd_search(settings: Settings, collection: str, query: str, k: int, adapter: str) -> int:
    from service import adapter_versions, search_terms
    from service import search as searching
    from service.collections import find_collection
    from service.context import ServiceContext

    ctx = ServiceContext(settings)
    with ctx.session() as session:
        found = find_collection(session, collection)
    who = adapter_versions.resolve(ctx, found.id, adapter)
    vectors = search_terms.query_vectors(ctx, found.id, who, query=query, image_id=None, terms=None).vectors
    hits = searching.search(ctx, found.id, vectors, k, who)[0]
    print_hits(who.name, [(hit.score, hit.filename, hit.image_id, hit.captions) for hit in hits])
    ctx.close()
    return 0


def print_hits(adapter: str, hits: list[tuple[float, str, int, list[str]]]) -> None:
    print(f"adapter: {adapter}")
    for rank, (score, filename, image_id, captions) in enumerate(hits, start=1):
        caption = f"  {captions[0]}" if captions else ""
        print(f"{rank:3d}  {score:+.4f}  {filename}  (image {image_id}){caption}")


def remote_search(client: ServerClient, collection: str, query: str, k: int, adapter: str) -> int:
    cid = client.collection_id(collection)
    body = client.call("POST", f"/collections/{cid}/search", {"query": query, "k": k, "adapter": adapter})
    print_hits(body["adapter"], [(h["score"], h["filename"], h["image_id"], h["captions"]) for h in body["results"]])
    return 0


def remote_tune(client: ServerClient, collection: str, config: dict | None, wait: bool) -> int:
    cid = client.collection_id(collection)
    job = client.call("POST", f"/collections/{cid}/tuning-jobs", config or {})
    print(f"tuning job {job['id']} queued for collection {cid} on {client.url}")
    if not wait:
        return 0
    job = follow_job(client, job, "step")
    version = f"v{job['adapter_version']}" if job.get("adapter_version") is not None else "no version"
    print(f"tuning job {job['id']} {job['state']}: {version}" + (f" ({job['error']})" if job.get("error") else ""))
    return 0 if job["state"] == JobState.SUCCEEDED else 1


def remote_import(client: ServerClient, collection: str, manifest: str | None, directory: str | None,
                  folder_categories: bool, wait: bool) -> int:
    cid = client.collection_id(collection)
    request = {"manifest": manifest} if manifest is not None else {"directory": directory,
                                                                   "folder_categories": folder_categories}
    job = client.call("POST", f"/collections/{cid}/images/import", request)
    print(f"import job {job['id']} queued for collection {cid} on {client.url} "
          f"({job['progress'].get('total_steps')} files)")
    if not wait:
        return 0
    job = follow_job(client, job, "file")
    progress = job.get("progress") or {}
    for failure in progress.get("failures") or []:
        print(f"failed {failure['path']}: {failure['reason']}")
    print(f"import job {job['id']} {job['state']}: {progress.get('added', 0)} added, "
          f"{progress.get('duplicates', 0)} duplicates, {progress.get('failed', 0)} failed"
          + (f" ({job['error']})" if job.get("error") else ""))
    return 0 if job["state"] == JobState.SUCCEEDED else 1


def follow_job(client: ServerClient, job: dict, unit: str) -> dict:
    """Poll the job with a progress bar (its step of total_steps) until it ends; the last state."""
    from tqdm import tqdm

    with tqdm(total=None, unit=unit, desc=f"job {job['id']}") as bar:
        while job["state"] not in TERMINAL_STATES:
            time.sleep(JOB_POLL_S)
            job = client.call("GET", f"/jobs/{job['id']}")
            progress = job.get("progress") or {}
            if progress.get("total_steps"):
                bar.total = progress["total_steps"]
            if progress.get("step") is not None and progress["step"] > bar.n:
                bar.update(progress["step"] - bar.n)
            bar.set_postfix_str(f"{job['state']} {progress.get('stage') or ''}".strip())
    return job


def cmd_reembed(settings: Settings) -> int:
    from service.reembed import reembed_all

    count = reembed_all(settings)
    print(f"re-encoded {count} images with the configured backbone")
    return 0


def load_settings(args: argparse.Namespace) -> Settings | None:
    """The settings, or None after printing why they are refused."""
    from pydantic import ValidationError

    try:
        return settings_from(args)
    except ValidationError as exc:
        print(f"error: {'; '.join(setting_problem(e) for e in exc.errors())}", file=sys.stderr)
        return None


def setting_problem(error: Any) -> str:
    """One refused setting, named by its flag where it has one (flag values are checked by Settings, not argparse)."""
    flag = SETTING_FLAGS.get(str(error["loc"][0])) if error["loc"] else None
    return f"{flag}: {error['msg']}" if flag else str(error["msg"])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from service.data_lock import holding_server_url

    settings: Settings | None = None  # read only where needed: the settings class loads pydantic
    if args.command in ("search", "tune", "import"):
        # Before torch, pydantic and SQLAlchemy load: asking a server needs only where it listens.
        url = args.url
        if url is None:
            data_dir = named_data_dir(args.data_dir)
            if data_dir is None:  # a .env file may name it: only the settings class can tell
                settings = load_settings(args)
                if settings is None:
                    return 2
                data_dir = settings.data_dir
            url = holding_server_url(data_dir)
        if url is not None:
            try:
                return ask_server(args, ServerClient(url, args.key))
            except ServerError as exc:
                print(f"error: {exc.detail}", file=sys.stderr)
                return 2
        if args.command in ("tune", "import"):
            print(f"error: no server holds the data directory {data_dir}; {args.command} jobs run in the "
                  f"server: start it with `prompt-adapters serve` (same --data-dir), or pass --url", file=sys.stderr)
            return 2

    if settings is None:  # not read yet (a search's look-up for its server may have needed it)
        settings = load_settings(args)
        if settings is None:
            return 2
    from adapters.backbone import BackboneError
    from service.auth import ExposureRefused
    from service.context import BackboneMismatch
    from service.data_lock import DataDirBusy, hold_data_dir
    from service.errors import DomainError

    try:
        if args.command == "keys":
            return run_keys_command(settings, args)
        if args.command in ("ingest", "search", "reembed"):
            with hold_data_dir(settings.data_dir, f"prompt-adapters {args.command}"):
                return run_command(args, settings)
        return run_command(args, settings)
    except (DomainError, BackboneMismatch, BackboneError, DataDirBusy, ExposureRefused) as exc:
        print(f"error: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2


def ask_server(args: argparse.Namespace, client: ServerClient) -> int:
    if args.command == "search":
        return remote_search(client, args.collection, args.query, args.k, args.adapter)
    if args.command == "import":
        return remote_import(client, args.collection, args.manifest, args.directory, args.folder_categories,
                             args.wait)
    return remote_tune(client, args.collection, args.config, args.wait)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        cmd_serve(settings)
        return 0
    if args.command == "worker":
        return cmd_worker(settings)
    if args.command == "migrate":
        cmd_migrate(settings)
        return 0
    if args.command == "ingest":
        return cmd_ingest(settings, args.directory, args.collection, args.captions)
    if args.command == "search":
        return cmd_search(settings, args.collection, args.query, args.k, args.adapter)
    if args.command == "reembed":
        return cmd_reembed(settings)
    return 1


if __name__ == "__main__":
    sys.exit(main())
