"""Learning from use over real HTTP: search ids, marks stored, listed and validated, and what a job trains on."""

from sqlalchemy import func, select

from service import feedback, search_log
from service.models import FeedbackRecord, SearchRecord, TuningJob
from service.schemas import TuningConfig
from service.tuning import captioned_image_ids, plan_split
from tests.service.test_tuning import QUICK, wait
from tests.support import fill, png_bytes, upload


def mark(client, cid, **body):
    return client.post(f"/collections/{cid}/feedback", json=body)


def test_every_search_answers_with_a_search_id_that_feedback_can_name(client):
    cid = fill(client)
    single = client.post(f"/collections/{cid}/search", json={"query": "  a red thing ", "k": 3}).json()
    assert isinstance(single["search_id"], int)
    assert single["search_ids"] is None
    batch = client.post(f"/collections/{cid}/search", json={"query": ["red", "blue"], "k": 2}).json()
    assert batch["search_id"] is None
    assert len(set(batch["search_ids"])) == 2
    by_image = client.post(f"/collections/{cid}/search", json={"image_id": single["results"][0]["image_id"]}).json()
    terms = client.post(f"/collections/{cid}/search", json={"terms": [{"text": "red"}, {"text": "blue", "weight": -1}]})
    uploaded = client.post(f"/collections/{cid}/search/image", files={"file": ("q.png", png_bytes(3))})
    ids = [single["search_id"], *batch["search_ids"], by_image["search_id"], terms.json()["search_id"],
           uploaded.json()["search_id"]]
    assert len(set(ids)) == 6

    with client.app.state.context.session() as session:
        stored = {row.id: row for row in session.scalars(select(SearchRecord))}
    assert stored[single["search_id"]].query == {"text": "a red thing"}
    assert stored[single["search_id"]].image_ids == [h["image_id"] for h in single["results"]]
    assert stored[single["search_id"]].adapter == "active"
    assert stored[single["search_id"]].served_by == "none"
    assert stored[batch["search_ids"][1]].query == {"text": "blue"}
    assert stored[by_image["search_id"]].query == {"image_id": single["results"][0]["image_id"]}
    assert stored[terms.json()["search_id"]].query == {"terms": [{"text": "red", "weight": 1.0},
                                                                {"text": "blue", "weight": -1.0}]}
    assert stored[uploaded.json()["search_id"]].query["uploaded_image"] is True

    # A mark naming the search takes its query.
    target = single["results"][1]["image_id"]
    response = mark(client, cid, search_id=single["search_id"], image_id=target, relevant=True)
    assert response.status_code == 201, response.text
    assert response.json()["query"] == {"text": "a red thing"}
    assert response.json()["search_id"] == single["search_id"]


def test_only_the_newest_searches_are_kept(client, monkeypatch):
    monkeypatch.setattr(search_log, "SEARCHES_KEPT", 3)
    cid = fill(client, n=4)
    other = fill(client, n=4, name="other")
    ids = [client.post(f"/collections/{cid}/search", json={"query": f"q{i}"}).json()["search_id"] for i in range(5)]
    client.post(f"/collections/{other}/search", json={"query": "elsewhere"})
    with client.app.state.context.session() as session:
        kept = sorted(session.scalars(select(SearchRecord.id).where(SearchRecord.collection_id == cid)))
        assert session.scalar(select(func.count(SearchRecord.id)).where(SearchRecord.collection_id == other)) == 1
    assert kept == ids[2:]
    image_id = client.get(f"/collections/{cid}/images").json()["items"][0]["id"]
    pruned = mark(client, cid, search_id=ids[0], image_id=image_id, relevant=True)
    assert pruned.status_code == 404
    assert pruned.json()["code"] == "search_not_found"


def test_feedback_is_stored_listed_and_validated(client):
    cid = fill(client, n=6)
    other = fill(client, n=2, name="other")
    mine = [i["id"] for i in client.get(f"/collections/{cid}/images").json()["items"]]
    foreign = client.get(f"/collections/{other}/images").json()["items"][0]["id"]
    foreign_search = client.post(f"/collections/{other}/search", json={"query": "x"}).json()["search_id"]

    assert mark(client, cid, query={"text": "red"}, image_id=mine[0], relevant=True).status_code == 201
    assert mark(client, cid, query={"image_id": mine[1]}, image_id=mine[2], relevant=False).status_code == 201
    assert mark(client, cid, query={"text": "blue"}, image_id=mine[3], relevant=False).status_code == 201

    refused = [
        (404, dict(query={"text": "red"}, image_id=foreign, relevant=True)),  # an image of another collection
        (404, dict(query={"image_id": foreign}, image_id=mine[0], relevant=True)),
        (404, dict(search_id=foreign_search, image_id=mine[0], relevant=True)),  # another collection's search
        (404, dict(query={"text": "red"}, image_id=10**12, relevant=True)),
        (422, dict(image_id=mine[0], relevant=True)),  # neither search_id nor query
        (422, dict(search_id=1, query={"text": "red"}, image_id=mine[0], relevant=True)),
        (422, dict(query={"text": "red", "image_id": mine[1]}, image_id=mine[0], relevant=True)),
        (422, dict(query={}, image_id=mine[0], relevant=True)),
        (422, dict(query={"text": "  \u200b "}, image_id=mine[0], relevant=True)),
        (422, dict(query={"text": "red"}, image_id=mine[0])),  # relevant missing
        (422, dict(query={"text": "red"}, image_id=mine[0], relevant="maybe")),
        (422, dict(query={"text": "red"}, image_id=0, relevant=True)),
        (422, dict(query={"text": "red"}, image_id=mine[0], relevant=True, extra=1)),
    ]
    for status, body in refused:
        response = mark(client, cid, **body)
        assert response.status_code == status, (body, response.text)
        assert "detail" in response.json()
    assert mark(client, 10**9, query={"text": "red"}, image_id=mine[0], relevant=True).status_code == 404

    page = client.get(f"/collections/{cid}/feedback", params={"limit": 2}).json()
    assert page["total"] == 3
    assert page["limit"] == 2
    assert len(page["items"]) == 2
    assert [(i["query"], i["image_id"], i["relevant"]) for i in page["items"]] == [
        ({"text": "blue"}, mine[3], False), ({"image_id": mine[1]}, mine[2], False)]
    rest = client.get(f"/collections/{cid}/feedback", params={"offset": 2}).json()["items"]
    assert [(i["query"], i["image_id"], i["relevant"], i["search_id"]) for i in rest] == [
        ({"text": "red"}, mine[0], True, None)]
    assert client.get(f"/collections/{other}/feedback").json()["total"] == 0
    assert client.get(f"/collections/{cid}/feedback", params={"limit": 0}).status_code == 422

    # Deleting an image takes its marks with it, and the marks whose query it was.
    assert client.delete(f"/collections/{cid}/images/{mine[1]}").status_code == 204
    assert client.delete(f"/collections/{cid}/images/{mine[3]}").status_code == 204
    left = client.get(f"/collections/{cid}/feedback").json()
    assert left["total"] == 1
    assert left["items"][0]["image_id"] == mine[0]


def test_a_job_trains_on_relevant_marks_but_never_on_its_held_out_images(client):
    cid = fill(client)
    response = upload(client, cid, [("unlabelled.png", png_bytes(100))])
    unlabelled = response.json()["accepted"][0]["id"]
    ctx = client.app.state.context
    config = {"method": "text", "activation": "never", **QUICK}
    split = plan_split(captioned_image_ids(ctx, cid), TuningConfig(**config))
    train, test = split["train"], split["test"]

    found = client.post(f"/collections/{cid}/search", json={"query": "a red thing", "k": 25}).json()
    in_train = next(h["image_id"] for h in found["results"] if h["image_id"] in train[5:])
    marks = [
        dict(search_id=found["search_id"], image_id=in_train, relevant=True),  # used
        dict(query={"text": "my favourite"}, image_id=unlabelled, relevant=True),  # used: the image joins training
        dict(query={"text": "my favourite"}, image_id=test[0], relevant=True),  # skipped: a test image
        dict(query={"image_id": train[1]}, image_id=train[2], relevant=True),  # skipped: no text
        dict(query={"text": "sky"}, image_id=train[3], relevant=True),  # overridden by the next mark
        dict(query={"text": "sky"}, image_id=train[3], relevant=False),
        dict(query={"text": "a red thing"}, image_id=train[4], relevant=False),
    ]
    for body in marks:
        assert mark(client, cid, **body).status_code == 201

    response = client.post(f"/collections/{cid}/tuning-jobs", json=config)
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    with ctx.session() as session:
        assert session.get(TuningJob, job["id"]).split == split  # the split the marks were placed against

    report = client.get(f"/collections/{cid}/adapters/{job['adapter_version']}").json()["report"]
    assert report["feedback"] == {"relevant_used": 2, "relevant_skipped_held_out": 1, "relevant_skipped_no_text": 1,
                                  "not_relevant_used": 1,  # "a red thing" trains (its relevant mark): train[4] ranks below
                                  "not_relevant_skipped_held_out": 0,
                                  "not_relevant_skipped_no_positive": 1,  # "sky" trains no image
                                  "not_relevant_skipped_no_text": 0, "images_added": 1}
    assert report["split_sizes"] == {"train": len(train) + 1, "val": len(split["val"]), "test": len(test)}

    # What training received: the marked texts on train images only; the test image keeps its own caption.
    marks_read = feedback.training_marks(ctx, cid, split)
    assert marks_read.captions == {in_train: ["a red thing"], unlabelled: ["my favourite"]}
    assert marks_read.negatives == {"sky": [train[3]], "a red thing": [train[4]]}
    with ctx.session() as session:
        assert session.scalar(select(func.count(FeedbackRecord.id))) == len(marks)


def test_not_relevant_marks_train_as_negatives_of_their_query(client):
    """Marks -> the job report's counts -> the negatives change what training optimises (and nothing else does)."""
    cid = fill(client)
    ctx = client.app.state.context
    config = {"method": "dual", "activation": "never", "seed": 3, **QUICK}
    split = plan_split(captioned_image_ids(ctx, cid), TuningConfig(**config))
    train, test = split["train"], split["test"]

    def tune() -> dict:
        response = client.post(f"/collections/{cid}/tuning-jobs", json=config)
        assert response.status_code == 202, response.text
        job = wait(client, response.json()["id"])
        assert job["state"] == "succeeded", job["error"]
        return client.get(f"/collections/{cid}/adapters/{job['adapter_version']}").json()["report"]

    before = tune()
    anchor = client.get(f"/collections/{cid}/images/{train[0]}").json()
    query = anchor["captions"][0]  # the anchor's own caption trains it: its negatives have something to rank below
    found = client.post(f"/collections/{cid}/search", json={"query": query, "k": 24}).json()
    wrong = [h["image_id"] for h in found["results"] if h["image_id"] in train[1:]][:3]
    marks = [dict(search_id=found["search_id"], image_id=i, relevant=False) for i in wrong] + [
        dict(query={"text": query}, image_id=test[0], relevant=False),  # a test image: never trained against
        dict(query={"text": "a query no image is captioned with"}, image_id=train[1], relevant=False),
        dict(query={"image_id": train[2]}, image_id=train[3], relevant=False),  # an image query: no text
    ]
    for body in marks:
        assert mark(client, cid, **body).status_code == 201

    after = tune()
    assert after["feedback"] == {"relevant_used": 0, "relevant_skipped_held_out": 0, "relevant_skipped_no_text": 0,
                                 "not_relevant_used": 3, "not_relevant_skipped_held_out": 1,
                                 "not_relevant_skipped_no_positive": 1, "not_relevant_skipped_no_text": 1,
                                 "images_added": 0}
    assert before["feedback"]["not_relevant_used"] == 0
    # Same split, captions, seed and config: only the negatives differ, and the optimised loss with them.
    assert after["split_sizes"] == before["split_sizes"]
    assert len(after["loss_curve"]) == len(before["loss_curve"])
    assert after["loss_curve"] != before["loss_curve"]


def test_a_mark_taken_back_does_not_train_the_next_job(client):
    cid = fill(client)
    other = fill(client, n=2, name="other")
    ctx = client.app.state.context
    config = {"method": "text", "activation": "never", **QUICK}
    split = plan_split(captioned_image_ids(ctx, cid), TuningConfig(**config))
    train = split["train"]
    kept = mark(client, cid, query={"text": "sky"}, image_id=train[0], relevant=True).json()["id"]
    dropped = mark(client, cid, query={"text": "my favourite"}, image_id=train[1], relevant=True).json()["id"]
    overriding = mark(client, cid, query={"text": "sky"}, image_id=train[0], relevant=False).json()["id"]

    assert client.delete(f"/collections/{other}/feedback/{kept}").status_code == 404  # another collection's mark
    for mark_id in (dropped, overriding):
        assert client.delete(f"/collections/{cid}/feedback/{mark_id}").status_code == 204
    again = client.delete(f"/collections/{cid}/feedback/{dropped}")
    assert again.status_code == 404
    assert again.json()["code"] == "not_found"
    assert client.delete(f"/collections/{cid}/feedback/0").status_code == 422
    assert client.delete(f"/collections/{10**9}/feedback/{kept}").status_code == 404
    assert [m["id"] for m in client.get(f"/collections/{cid}/feedback").json()["items"]] == [kept]

    response = client.post(f"/collections/{cid}/tuning-jobs", json=config)
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    report = client.get(f"/collections/{cid}/adapters/{job['adapter_version']}").json()["report"]
    # Only the kept mark trains: the taken-back "not relevant" no longer overrides it, "my favourite" is gone.
    assert report["feedback"]["relevant_used"] == 1
    assert report["feedback"]["not_relevant_used"] == 0
    assert report["feedback"]["not_relevant_skipped_no_positive"] == 0
    assert report["feedback"]["images_added"] == 0
    assert feedback.training_marks(ctx, cid, split).captions == {train[0]: ["sky"]}
