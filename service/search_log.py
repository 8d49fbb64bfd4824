"""The stored searches (``searches``), written in groups: one transaction for concurrent searches.

Every search stores its query, the adapter selector and the ids it returned, so that a mark can name
a result list by ``search_id`` (``service.feedback``). A search waits for its row to be committed
(its id is in the response), so under load that commit is the search's longest step: concurrent
searches share one (``service.grouping``), and a lone one commits alone at once.

Only the newest ``SEARCHES_KEPT`` per collection are kept: older ones are pruned as new ones come.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.errors import not_found
from service.grouping import Grouper
from service.models import SearchRecord

SEARCHES_KEPT = 1000  # per collection: enough to mark the results of a long session, bounded for ever


@dataclass
class ServedSearches:
    """One request's result lists (several for a batch of texts)."""

    collection_id: int
    adapter: str  # the selector as asked
    served_by: str  # what answered
    queries: list[dict]
    results: list[list[int]]

    def rows(self) -> list[SearchRecord]:
        return [SearchRecord(collection_id=self.collection_id, adapter=self.adapter, served_by=self.served_by,
                             query=query, image_ids=ids)
                for query, ids in zip(self.queries, self.results, strict=True)]


class SearchLog:
    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions
        self._grouper: Grouper[ServedSearches, list[int]] = Grouper(self.write_group, max_size=64)

    def record(self, served: ServedSearches) -> list[int]:
        """Store the result lists; their ids. 404 when the collection was deleted meanwhile."""
        return self._grouper.submit(served)

    def write_group(self, group: list[ServedSearches]) -> list[list[int] | BaseException]:
        with self.sessions() as session:
            rows = [served.rows() for served in group]
            session.add_all([row for request in rows for row in request])
            try:
                session.flush()
            except IntegrityError:  # a collection was deleted while its search ran: that search alone fails
                session.rollback()
                if len(group) == 1:
                    return [not_found("collection", group[0].collection_id)]
                return [result for served in group for result in self.write_group([served])]
            for collection_id in {served.collection_id for served in group}:
                prune(session, collection_id)
            session.commit()
            return [[row.id for row in request] for request in rows]


def prune(session: Session, collection_id: int) -> None:
    oldest_kept = session.scalar(
        select(SearchRecord.id).where(SearchRecord.collection_id == collection_id)
        .order_by(SearchRecord.id.desc()).offset(SEARCHES_KEPT - 1).limit(1))
    if oldest_kept is not None:
        session.execute(delete(SearchRecord).where(SearchRecord.collection_id == collection_id,
                                                   SearchRecord.id < oldest_kept))
