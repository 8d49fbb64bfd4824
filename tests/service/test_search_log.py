"""Stored searches written in groups: each request gets its own ids, and one failing request of a
group (its collection deleted meanwhile) fails alone."""

import threading

from sqlalchemy import select

from service.errors import NotFound
from service.models import SearchRecord
from service.search_log import SearchLog, ServedSearches


def served(cid, text, ids):
    return ServedSearches(cid, "active", "none", [{"text": text}], [ids])


def test_a_group_gives_each_request_its_own_rows(client):
    cid = client.post("/collections", json={"name": "log"}).json()["id"]
    ctx = client.app.state.context
    log = SearchLog(ctx.sessions)
    first, second = log.write_group([served(cid, "a", [1, 2]), served(cid, "b", [3])])
    with ctx.session() as session:
        rows = {r.id: r for r in session.scalars(select(SearchRecord).where(SearchRecord.collection_id == cid))}
    assert rows[first[0]].query == {"text": "a"}
    assert rows[first[0]].image_ids == [1, 2]
    assert rows[second[0]].query == {"text": "b"}


def test_a_deleted_collection_fails_only_its_own_request(client):
    cid = client.post("/collections", json={"name": "kept"}).json()["id"]
    gone = client.post("/collections", json={"name": "gone"}).json()["id"]
    assert client.delete(f"/collections/{gone}").status_code == 204
    ctx = client.app.state.context
    kept, failed = SearchLog(ctx.sessions).write_group([served(cid, "a", [1]), served(gone, "b", [2])])
    assert isinstance(failed, NotFound)
    with ctx.session() as session:
        assert session.scalar(select(SearchRecord.query).where(SearchRecord.id == kept[0])) == {"text": "a"}


def test_concurrent_records_all_land_with_distinct_ids(client):
    cid = client.post("/collections", json={"name": "busy"}).json()["id"]
    log = client.app.state.context.search_log
    ids: dict[int, list[int]] = {}

    def record(n):
        ids[n] = log.record(served(cid, f"q{n}", [n]))

    threads = [threading.Thread(target=record, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(v) for v in ids.values()) == [1] * 12
    assert len({v[0] for v in ids.values()}) == 12
    with client.app.state.context.session() as session:
        stored = dict(session.execute(select(SearchRecord.id, SearchRecord.image_ids)
                                      .where(SearchRecord.collection_id == cid)).all())
    assert {n: stored[v[0]] for n, v in ids.items()} == {n: [n] for n in range(12)}
