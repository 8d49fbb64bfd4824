"""`prompt-adapters keys create | list | revoke`, and the exposure check of `serve`.

Keys live in the database, so these commands work while a server runs on the same data directory
(a new key or a revocation takes effect at the server's next request).
"""

from __future__ import annotations

import argparse
import sys

from service.vocabulary import SCOPES  # not from api_keys: `search` must not import SQLAlchemy


def add_keys_commands(sub, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", parents=[common], help="create a key; it is printed once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument("--collection", dest="collections", type=int, action="append", metavar="ID",
                        help="limit the key to this collection (repeatable); default: every collection")
    actions.add_parser("list", parents=[common], help="list keys (never the keys themselves)")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("key_id", type=int)


def _session(settings):
    from service.db import make_engine, make_session_factory, migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return engine, make_session_factory(engine)()


def run_keys_command(settings, args: argparse.Namespace) -> int:
    from service import api_keys

    engine, session = _session(settings)
    try:
        if args.keys_command == "create":
            try:
                row, key = api_keys.create_key(session, args.name, args.scope, args.collections)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            where = ", ".join(map(str, row.collection_ids)) if row.collection_ids else "every collection"
            print(f"created key {row.id} ({row.name}, {row.scope}, {where}); it is shown only now:", file=sys.stderr)
            print(key)
            return 0
        if args.keys_command == "list":
            for row in api_keys.list_keys(session):
                where = ",".join(map(str, row.collection_ids)) if row.collection_ids else "all"
                state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
                print(f"{row.id}\t{row.name}\t{row.scope}\tcollections={where}\t{row.hint}…\t{state}")
            return 0
        if args.keys_command == "revoke":
            revoked = api_keys.revoke_key(session, args.key_id)
            if revoked is None:
                print(f"error: key {args.key_id} not found", file=sys.stderr)
                return 2
            print(f"key {revoked.id} ({revoked.name}) is revoked")
            return 0
        return 1
    finally:
        session.close()
        engine.dispose()


def check_serving_exposure(settings) -> None:
    """Refuse, in one line and before loading the backbone, to serve a non-loopback address open."""
    from service import api_keys
    from service.auth import check_exposure, is_loopback

    if settings.auth_disabled or is_loopback(settings.host):
        return
    engine, session = _session(settings)
    try:
        check_exposure(settings.host, settings.auth_disabled, api_keys.keys_exist(session))
    finally:
        session.close()
        engine.dispose()
