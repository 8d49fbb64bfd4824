"""API keys: created by the CLI, shown once, stored only as a SHA-256 hash.

A key has a scope (read < write < admin) and optionally a list of collections it may see; for any
other collection it behaves as if the collection did not exist. Once any key has been created the
server requires a key on every route but /healthz, also after every key was revoked (revoking the
last key must not open the server).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from service.models import Base, UTCDateTime, utcnow
from service.vocabulary import SCOPES

KEY_PREFIX = "pas_"


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(16))
    collection_ids: Mapped[list | None] = mapped_column(JSON, nullable=True)  # None: every collection
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart in listings
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's scope and the collections it may touch (None: all)."""

    name: str
    scope: str
    collection_ids: frozenset[int] | None

    def allows_scope(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)

    def sees(self, collection_id: int) -> bool:
        return self.collection_ids is None or collection_id in self.collection_ids


# The server runs open (no key configured, loopback only, or auth turned off): everything is allowed.
OPEN = Principal(name="open", scope="admin", collection_ids=None)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def create_key(session: Session, name: str, scope: str, collection_ids: list[int] | None) -> tuple[ApiKey, str]:
    """Store a new key's hash; the key itself is returned once and never again."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    if not name.strip() or not name.isprintable():
        raise ValueError("name must be printable and not blank")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name.strip(), scope=scope, collection_ids=sorted(set(collection_ids)) if collection_ids else None,
                 key_hash=hash_key(key), hint=key[:8])
    session.add(row)
    session.commit()
    return row, key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, key_id: int) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def keys_exist(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).limit(1)) is not None


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal of a live key, or None. Hashes are compared in constant time, every one of them."""
    wanted = hash_key(presented)
    found = None
    for name, scope, collection_ids, key_hash in session.execute(
            select(ApiKey.name, ApiKey.scope, ApiKey.collection_ids, ApiKey.key_hash)
            .where(ApiKey.revoked_at.is_(None))):
        if hmac.compare_digest(wanted, key_hash):
            found = Principal(name, scope, frozenset(collection_ids) if collection_ids is not None else None)
    return found
