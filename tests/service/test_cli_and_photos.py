"""As a new user would: real photos (scikit-image ships some in its wheel), the CLI, a restart."""

import json
import shutil
from pathlib import Path

import pytest
import skimage

from service.cli import main
from tests.support import upload

PHOTOS = {
    "astronaut.png": "an astronaut in a space suit with a flag",
    "coffee.png": "a cup of coffee on a saucer",
    "chelsea.png": "a tabby cat looking sideways",
    "rocket.jpg": "a rocket on the launch pad",
    "motorcycle_left.png": "a motorcycle parked in a garage",
    "camera.png": "a man with a camera on a tripod, black and white",
}
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"


@pytest.fixture
def photo_dir(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(SKIMAGE_DATA / name, folder / name)
    (folder / "notes.txt").write_text("not an image, and not picked up")
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join(json.dumps({"path": n, "captions": [c]}) for n, c in PHOTOS.items()))
    return folder, captions


def test_real_photos_over_http_survive_restart(make_client, photo_dir):
    folder, _ = photo_dir
    client = make_client()
    cid = client.post("/collections", json={"name": "photos"}).json()["id"]
    names = list(PHOTOS)
    response = upload(client, cid, [(n, (folder / n).read_bytes()) for n in names],
                      [{"captions": [PHOTOS[n]]} for n in names])
    assert response.status_code == 200
    assert len(response.json()["accepted"]) == len(names)
    query = {"query": ["a cat", "coffee"], "k": 3}
    before = client.post(f"/collections/{cid}/search", json=query).json()
    again = make_client.restart(client).post(f"/collections/{cid}/search", json=query).json()
    assert (again["adapter"], again["results"]) == (before["adapter"], before["results"])
    assert set(again["search_ids"]).isdisjoint(before["search_ids"])  # every search is its own result list


@pytest.mark.slow
def test_cli_ingest_then_search(photo_dir, tmp_path, capsys, monkeypatch):
    folder, captions = photo_dir
    data_dir = tmp_path / "cli-data"
    common = ["--data-dir", str(data_dir), "--backbone-model", "tiny-vit-test"]
    assert main(["ingest", str(folder), "--collection", "mine", "--captions", str(captions), *common]) == 0
    out = capsys.readouterr().out
    assert f"{len(PHOTOS)} added, 0 duplicates, 0 rejected" in out

    assert main(["ingest", str(folder), "--collection", "mine", *common]) == 0
    assert f"0 added, {len(PHOTOS)} duplicates" in capsys.readouterr().out

    assert main(["search", "mine", "a cup of coffee", "-k", "3", *common]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "adapter: none"
    assert len(lines) == 4
    assert {line.split()[2] for line in lines[1:]} <= set(PHOTOS)  # file names, as ingested

    assert main(["search", "no-such-collection", "x", *common]) == 2
    assert "not found" in capsys.readouterr().err
