"""The web page driven by headless Chromium against a live server: the whole mission through the page.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); skipped where they are missing.
Screenshots of the main screens: PAS_UI_SCREENSHOTS=1 writes them to docs/ui/ (the README shows them).
"""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import date, timedelta

import pytest

from adapters.backbone import load_backbone
from tests.web.page import SCREENSHOTS, Page, screenshot_dir, write_photos, write_scenes


@pytest.fixture
def photo_folder(tmp_path):
    """photos/<category>/<n>.png with a caption file beside each, and one file that is not an image.

    Generated coloured shapes on the tiny test model; with PAS_UI_SCREENSHOTS=1 the benchmark's scenes on the
    shipped miniworld backbone, so that the README's pictures show rankings that mean something."""
    root = tmp_path / "photos"
    if SCREENSHOTS:
        write_scenes(root, 96)  # enough test pairs for the pictures to show a difference
    else:
        write_photos(root, per_colour=7, subfolders=True)
    next(p for p in sorted(root.iterdir()) if p.is_dir()).joinpath("broken.png").write_bytes(b"this is not an image")
    return root


def get_json(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.load(response)


def signed(x: float) -> str:
    return f"{'−' if x < 0 else '+'}{abs(x):.3f}"


@pytest.mark.slow  # about a minute: Chromium, an upload, a tuning job and every screen
def test_whole_mission_through_the_page(serve, browser, photo_folder, tmp_path):
    base = serve(backbone=load_backbone() if SCREENSHOTS else None)
    page = Page(browser, base, screenshot_dir(tmp_path / "shots"))
    images = len(list(photo_folder.glob("*/*.png"))) - 1
    categories = {p.name for p in photo_folder.iterdir()}

    # Collections: empty at first; create one, create and delete a second one (with confirmation).
    page.open("/")
    page.wait_text("#main", "No collections yet")
    page.fill("#new-name", "scratch")
    page.button("Create collection").click()
    page.wait_text("#crumbs", "scratch")
    page.click("#crumbs a")
    page.fill("#new-name", "Holiday photos")
    page.fill("#new-description", "Photos sorted into folders")
    page.button("Create collection").click()
    page.wait_text("#crumbs", "Holiday photos")
    page.click("#crumbs a")
    page.find("#collections")
    page.find("[aria-label='Delete collection scratch']").click()
    page.wait_text("#confirm-text", "scratch")
    page.button("Cancel", within="#confirm").click()
    assert len(page.all("#collections tbody tr")) == 2
    page.find("[aria-label='Delete collection scratch']").click()
    page.button("Delete", within="#confirm").click()
    page.wait_for(lambda: len(page.all("#collections tbody tr")) == 1, message="scratch was not deleted")

    # Upload a folder: sub-folder names become categories, .txt files captions; the broken file is listed as rejected.
    page.find("#collections a").click()
    page.find("#pick-folder").send_keys(str(photo_folder))
    summary = page.wait_text("#upload-summary", "rejected.", timeout=90)
    assert summary == f"{images} added, 0 already in the collection, 1 rejected.", summary
    assert "broken.png" in page.text("#rejected")
    assert "not a decodable image" in page.text("#rejected")  # the file's own reason, not the request's
    assert page.find("#rejected-box").get_attribute("open") is not None
    assert len(page.all("#uploads li[data-state=added]")) == images
    pages = -(-images // 24)
    assert page.text("#page-info") == f"Page 1 of {pages} · {images} images"
    page.images_loaded("#grid")
    assert len(page.all("#grid .tile")) == 24
    assert {b.text for b in page.all("#grid .badge")} <= categories
    assert len(page.all("#grid .badge")) == 24
    assert page.unlabelled_controls() == []
    page.shot("images")
    page.button("Next").click()
    page.wait_text("#page-info", f"Page 2 of {pages}")
    assert len(page.all("#grid .tile")) == min(24, images - 24)

    # Tuning: a long job shows live progress and is cancelled; then a tiny one is watched until it finishes.
    page.click("#tab-tuning")
    page.find("#advanced summary").click()
    assert page.unlabelled_controls() == []
    for field, value in {"epochs": "200", "batch_size": "2", "text_tokens": "2", "visual_tokens": "2", "patience": ""}.items():
        page.fill(f"#cfg-{field}", value)
    page.click("#start-custom")
    page.find("#job-board[data-job='1']")
    page.wait_text("[data-field=stage]", "training", timeout=60)
    page.wait_for(lambda: re.fullmatch(r"[1-9]\d* of \d{3,}", page.text("[data-field=step]")), message="no live step count")
    page.click("#cancel-job")
    page.wait_for(lambda: page.find("#job-board[data-job='1']").get_attribute("data-state") == "cancelled", timeout=60,
                  message="the job was not cancelled")
    assert not page.find("#cancel-job").is_displayed()
    for field, value in {"epochs": "6" if SCREENSHOTS else "2", "batch_size": "8", "patience": "4"}.items():
        page.fill(f"#cfg-{field}", value)
    page.find("#cfg-activation option[value=always]").click()
    page.click("#start-custom")
    page.wait_for(lambda: page.find("#job-board[data-job='2']").get_attribute("data-state") in ("succeeded", "failed", "cancelled"),
                  timeout=120, message="the tuning job did not finish")
    assert page.find("#job-board").get_attribute("data-state") == "succeeded", page.text("#job-board")
    page.find("#job-test")
    assert page.text("[data-field=state]") == "succeeded"
    assert page.text("[data-field=split]") != "– / – / –"
    assert page.text("[data-field=candidate]") == "3 of 3"  # method auto, the default: three candidate recipes
    r1_cells = page.all("#job-test [data-metric=t2i_r1]")
    assert len(r1_cells) == 2
    assert all("%" in c.text for c in r1_cells)
    assert len(page.all("#job-charts svg path")) >= 3  # loss, R@1, R@5 (and the zero-shot line)
    assert "v1: active" in page.text("#job-outcome")
    # The activation decision with the server's paired interval of the gain (no page-computed Wilson intervals).
    collection_id = re.search(r"#/c/(\d+)/", browser.current_url).group(1)
    evidence = get_json(base, f"/collections/{collection_id}/adapters/1")["report"]["activation"]
    gain = evidence["gain"]
    assert (f"gain {signed(gain['mean'])} R@1, 95 % interval {signed(gain['low'])} to {signed(gain['high'])} "
            f"over {evidence['queries']} queries: activated") in page.text("#job-activation [data-field=activation]")
    assert "Marks: 0 relevant used" in page.text("#job-activation [data-field=feedback]")
    assert not page.all("#job-test .ci")
    page.shot("tuning")

    # Adapters: v1 is active; details with test metrics; roll back to zero-shot, activate again.
    page.click("#tab-adapters")
    page.wait_text("#serving-state", "adapter v1")
    row = page.find("#adapters tr[data-version='1']")
    assert row.get_attribute("data-active") == "true"
    assert "%" in page.text("#adapters [data-field=r1]")
    assert "%" in page.text("#adapters [data-field=r1-zero-shot]")
    page.button("Details").click()
    page.find("#adapter-test")
    assert f"over {evidence['queries']} queries: activated" in page.text("#adapter-activation [data-field=activation]")
    assert page.text("#adapter-candidates").count("(kept)") == 1
    assert len(page.all("#adapter-detail svg")) == 2
    assert page.unlabelled_controls() == []
    page.shot("adapters")
    page.button("Roll back to zero-shot").click()
    page.wait_text("#serving-state", "zero-shot")
    assert page.find("#adapters tr[data-version='1']").get_attribute("data-active") == "false"
    page.button("Activate").click()
    page.wait_text("#serving-state", "adapter v1")

    # Download v1, upload the file again as v2 (kept inactive), delete v2 after the confirmation.
    page.button("Download", within="#adapters tr[data-version='1']").click()
    downloaded = browser.download_dir / "Holiday photos-v1.safetensors"
    page.wait_for(lambda: downloaded.exists() and downloaded.stat().st_size > 0, message="the adapter was not downloaded")
    page.find("#adapter-file").send_keys(str(downloaded))
    page.button("Upload").click()
    uploaded = page.find("#adapters tr[data-version='2']")
    assert uploaded.get_attribute("data-active") == "false"
    page.button("Delete", within="#adapters tr[data-version='2']").click()
    page.button("Delete", within="#confirm").click()
    page.wait_for(lambda: not page.all("#adapters tr[data-version='2']"), message="v2 was not deleted")
    assert page.text("#serving-state") == "Search uses adapter v1."

    # Search: zero-shot and the active adapter side by side, ten scored results each.
    page.click("#tab-search")
    page.fill("#query", "a red circle")
    page.button("Search").click()
    page.find("#results-adapter")
    for column in ("#results-zero-shot", "#results-adapter"):
        hits = page.all(f"{column} .hit")
        assert len(hits) == 10
        scores = [float(s.text) for s in page.all(f"{column} .score")]
        assert scores == sorted(scores, reverse=True)
    assert "(zero-shot, 10 results)" in page.text("#results-zero-shot h3")
    assert "(v1, 10 results)" in page.text("#results-adapter h3")
    page.images_loaded("#results")
    assert page.unlabelled_controls() == []
    plain_scores = [s.text for s in page.all("#results-zero-shot .score")]

    # Marks: one result of each column, relevant on the zero-shot side, not relevant on the adapter's, each
    # about its own column's search; the buttons show what was recorded and the counter counts the marks.
    assert page.text("#feedback-count") == "0 marks"
    right = page.all("#results-zero-shot .hit")[0]
    wrong = page.all("#results-adapter .hit")[1]
    right_id, wrong_id = right.get_attribute("data-image"), wrong.get_attribute("data-image")
    right.find_element(page.By.CSS_SELECTOR, ".mark.relevant").click()
    page.wait_text("#feedback-count", "1 mark")
    wrong.find_element(page.By.CSS_SELECTOR, ".mark.not-relevant").send_keys("\n")  # by keyboard: Enter
    page.wait_text("#feedback-count", "2 marks")
    def pressed(hit, kind):
        return hit.find_element(page.By.CSS_SELECTOR, f".mark.{kind}").get_attribute("aria-pressed")

    assert (pressed(right, "relevant"), pressed(right, "not-relevant")) == ("true", "false")
    assert (pressed(wrong, "relevant"), pressed(wrong, "not-relevant")) == ("false", "true")
    marks = get_json(base, f"/collections/{collection_id}/feedback")
    searches = {c: page.find(f"#results-{c}").get_attribute("data-search") for c in ("zero-shot", "adapter")}
    assert marks["total"] == 2
    assert sorted((str(m["search_id"]), str(m["image_id"]), m["relevant"]) for m in marks["items"]) == sorted(
        [(searches["zero-shot"], right_id, True), (searches["adapter"], wrong_id, False)])
    assert all(m["query"] == {"text": "a red circle"} for m in marks["items"])
    # Pressing a pressed mark takes it back; pressing the other one replaces it: one mark, relevant, is left.
    right.find_element(page.By.CSS_SELECTOR, ".mark.relevant").click()
    page.wait_text("#feedback-count", "1 mark")
    assert (pressed(right, "relevant"), pressed(right, "not-relevant")) == ("false", "false")
    wrong.find_element(page.By.CSS_SELECTOR, ".mark.relevant").click()
    page.wait_for(lambda: pressed(wrong, "relevant") == "true", message="the replacing mark was not shown")
    assert pressed(wrong, "not-relevant") == "false"
    assert page.text("#feedback-count") == "1 mark"
    left = get_json(base, f"/collections/{collection_id}/feedback")["items"]
    assert [(str(m["image_id"]), m["relevant"]) for m in left] == [(wrong_id, True)]

    # A negative term ("without") changes the query: other scores, and the heading says what was left out.
    page.fill("#without", "blue")
    page.button("Search").click()
    page.wait_text("#results-for", "without blue")
    assert len(page.all("#results-zero-shot .hit")) == 10
    assert [s.text for s in page.all("#results-zero-shot .score")] != plain_scores
    page.fill("#without", "")

    # The category filter lists the collection's categories; only that category comes back, on both sides.
    options = [o.get_attribute("value") for o in page.all("#filter-category option")]
    assert options == ["", *sorted(categories)]
    chosen = sorted(categories)[0]
    page.find(f"#filter-category option[value='{chosen}']").click()
    page.button("Search").click()
    page.wait_for(lambda: page.all("#results-for") and "without" not in page.text("#results-for")
                  and len(page.all("#results-adapter .hit")) > 0, message="no filtered results")
    in_category = len(list(photo_folder.glob(f"{chosen}/*.png"))) - (1 if (photo_folder / chosen / "broken.png").exists() else 0)
    for column in ("#results-zero-shot", "#results-adapter"):
        assert len(page.all(f"{column} .hit")) == min(10, in_category)
        assert {b.text for b in page.all(f"{column} .badge")} == {chosen}
    page.find("#filter-category option[value='']").click()

    # A date range: nothing was uploaded tomorrow; since yesterday, everything.
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    page.set_date("#filter-from", tomorrow)
    page.button("Search").click()
    page.wait_text("#results-zero-shot", "No results.")
    assert "(zero-shot, 0 results)" in page.text("#results-zero-shot h3")
    page.set_date("#filter-from", (date.today() - timedelta(days=1)).isoformat())
    page.button("Search").click()
    page.wait_for(lambda: len(page.all("#results-adapter .hit")) == 10, message="today's images were not found")
    page.set_date("#filter-from", "")

    # "More like this" on a result: that image comes first (it is most like itself), on both sides.
    first = page.all("#results-adapter .hit")[0]
    image_id = first.get_attribute("data-image")
    first.find_element(page.By.CSS_SELECTOR, ".more-like").click()
    page.wait_text("#results-for", f"More like image #{image_id}")
    for column in ("#results-zero-shot", "#results-adapter"):
        assert len(page.all(f"{column} .hit")) == 10
        assert page.all(f"{column} .hit")[0].get_attribute("data-image") == image_id
        assert page.all(f"{column} .score")[0].text == "1.000"

    # Search with an uploaded image file: its own stored copy comes first on the zero-shot side.
    picture = sorted(photo_folder.glob(f"{chosen}/*.png"))
    picture = next(p for p in picture if p.name != "broken.png")
    page.find("#query-image").send_keys(str(picture))
    page.button("Search").click()
    page.wait_text("#results-for", f"Like the image {picture.name}")
    assert len(page.all("#results-zero-shot .hit")) == 10
    assert len(page.all("#results-adapter .hit")) == 10
    assert float(page.all("#results-zero-shot .score")[0].text) > 0.99
    assert picture.name in page.all("#results-zero-shot .caption")[0].get_attribute("title")
    page.button("Clear image").click()
    page.images_loaded("#results")
    assert page.unlabelled_controls() == []
    page.shot("search")

    # Editing one image in its dialog: the tile shows the new caption and category.
    page.click("#tab-images")
    tile = page.find("#grid .tile")
    edited = tile.get_attribute("data-image")
    tile.find_element(page.By.XPATH, ".//button[normalize-space()='Edit']").click()
    page.wait_text("#edit-title", f"#{edited}")
    assert page.find("#edit-category").get_attribute("value") in categories
    assert page.unlabelled_controls() == []
    page.fill("#edit-captions", "a hand-written caption\na second one")
    page.fill("#edit-category", "favourites")
    page.button("Save", within="#edit-image").click()
    page.wait_text(f"#grid .tile[data-image='{edited}']", "a hand-written caption")
    assert page.text(f"#grid .tile[data-image='{edited}'] .badge") == "favourites"
    assert not page.find("#edit-image").is_displayed()

    # Editing a selection: three ticked tiles get one category at once; the others keep theirs.
    assert page.find("#bulk button:not(.secondary)").get_attribute("disabled") is not None
    picked = [t.get_attribute("data-image") for t in page.all("#grid .tile")[1:4]]
    for image_id in picked:
        page.click(f"#grid .tile[data-image='{image_id}'] .pick")
    assert page.text("#selected-count") == "3 selected"
    page.fill("#bulk-category", "picked")
    page.button("Set category").click()
    page.wait_text("#selected-count", "0 selected")
    page.wait_for(lambda: [page.text(f"#grid .tile[data-image='{i}'] .badge") for i in picked] == ["picked"] * 3,
                  message="the selection's category was not shown")
    assert page.text(f"#grid .tile[data-image='{edited}'] .badge") == "favourites"
    assert [b.text for b in page.all("#grid .badge")].count("picked") == 3
    assert not any(c.is_selected() for c in page.all("#grid .pick"))
    page.click("#tab-search")
    page.wait_for(lambda: {o.get_attribute("value") for o in page.all("#filter-category option")}
                  == {"", "favourites", "picked"} | categories, message="the search filter misses the new categories")

    # Back on the list: the count and the adapter state are shown.
    page.click("#crumbs a")
    page.wait_text("#collections [data-field=adapter]", "v1 active")
    assert page.text("#collections [data-field=images]") == str(images)
    page.shot("collections")

    # Phone width: nothing wider than the screen.
    browser.set_window_size(390, 844)
    page.find("#collections a").click()
    page.click("#tab-search")
    page.fill("#query", "a blue square")
    page.find("#k option[value='5']").click()
    page.button("Search").click()
    page.find("#results-adapter .hit")
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    assert page.find("#results-adapter").location["x"] > page.find("#results-zero-shot").location["x"]  # still side by side
    page.shot("search-phone")
    browser.set_window_size(1280, 900)

    # The only failed request: the broken file, uploaded alone, answers 422 (every file of it rejected).
    assert page.console_errors(allowed="/images - Failed to load resource: the server responded with a status of 422") == []

    # The API docs work without internet: Swagger UI and ReDoc render from local assets.
    page.open("/docs")
    page.wait_text(".swagger-ui .info", "Prompt-adapter retrieval service")
    page.open("/redoc")
    page.wait_text("h1", "Prompt-adapter retrieval service")
    assert page.console_errors() == []
