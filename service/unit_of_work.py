"""The one way to change what a collection holds: a unit of work that every write path goes through.

The protocol, so that files, rows and index entries agree through failures and restarts:

1. take the lock of each collection written (writers of one collection go one at a time; readers
   never wait);
2. open one database transaction; lock the collections' rows in it (``SELECT ... FOR NO KEY UPDATE``
   on PostgreSQL), so that writers in other processes sharing the database also go one at a time;
3. write new files first, each registered with ``stage``: if anything fails before the commit,
   the transaction is rolled back and the staged files are removed;
4. raise each collection's ``index_generation`` and commit: the point of no return (other processes
   holding the collection's indexes see the new number and catch up from the stored vectors);
5. apply the queued index and file changes (``after_commit``), still under the lock.

A process that dies before 4 leaves staged files without rows; one that dies between 4 and 5 leaves
indexes and files behind the rows. Start-up recovery (``ServiceContext.recover``) removes the first
and repairs the second, so no write path has to handle a crash itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.context import ServiceContext
from service.errors import not_found
from service.models import Collection

log = logging.getLogger(__name__)

Action = Callable[[], object]


def phase_reached(phase: str) -> None:
    """Called at each phase boundary ("staged": before the commit, "committed": after it).

    Does nothing; the crash tests replace it to end the process right there, as a power cut would.
    """


class CollectionWriter:
    """``with CollectionWriter(ctx, collection_id) as w:`` ... ``w.commit()``.

    Leaving the block without ``commit()`` (or by an exception) rolls everything back.
    """

    def __init__(self, ctx: ServiceContext, *collection_ids: int):
        self.ctx = ctx
        self.collection_ids = sorted(set(collection_ids))  # a fixed order: two writers never deadlock
        self._stack = ExitStack()
        self._undo: list[Action] = []
        self._after: list[tuple[Action, Action | None]] = []
        self._committed = False
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("a CollectionWriter is used inside its with-block")
        return self._session

    def __enter__(self) -> CollectionWriter:
        with ExitStack() as stack:
            for collection_id in self.collection_ids:
                stack.enter_context(self.ctx.collection_lock(collection_id))
            self._session = stack.enter_context(self.ctx.session())
            # Across processes (PostgreSQL; SQLite ignores it and allows one process anyway). NO KEY:
            # rows that merely refer to the collection (a search record, a job) are not held up.
            self._session.execute(select(Collection.id).where(Collection.id.in_(self.collection_ids))
                                  .with_for_update(key_share=True))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if not self._committed:
                self._roll_back()
        finally:
            self._session = None
            self._stack.close()

    def _roll_back(self) -> None:
        try:
            self.session.rollback()
        finally:  # staged files go even if the database is unreachable (nothing was committed)
            for undo in reversed(self._undo):
                try:
                    undo()
                except Exception:  # the caller must see the error that started the rollback
                    log.exception("could not undo a staged write; start-up recovery removes it")

    # --- what a write path declares --------------------------------------------------------------

    def require_collection(self, collection_id: int) -> Collection:
        """The collection row, or NotFound (e.g. it was deleted while an upload was being read)."""
        collection = self.session.get(Collection, collection_id)
        if collection is None:
            raise not_found("collection", collection_id)
        return collection

    def stage(self, undo: Action) -> None:
        """Register how to remove a file this unit writes (or is about to write) before the commit."""
        self._undo.append(undo)

    def after_commit(self, action: Action, repair: Action | None = None) -> None:
        """Queue an index or file change that must wait for the commit.

        If it fails, ``repair`` (when given) makes things agree with the rows again; otherwise the
        failure is logged and the next start-up recovery repairs it.
        """
        self._after.append((action, repair))

    def commit(self) -> None:
        phase_reached("staged")
        self.session.execute(update(Collection).where(Collection.id.in_(self.collection_ids))
                             .values(index_generation=Collection.index_generation + 1))
        self.session.commit()
        self._committed = True
        phase_reached("committed")
        for action, repair in self._after:
            try:
                action()
            except Exception:  # the rows are committed: never report the write as failed now
                if repair is None:
                    log.exception("a change after the commit failed; start-up recovery repairs it")
                else:
                    log.exception("a change after the commit failed; repairing now")
                    repair()
