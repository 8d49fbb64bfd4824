"""`prompt-adapters search` and `tune` against a real server (uvicorn on 127.0.0.1) holding the data directory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from service.cli import main
from service.data_lock import SERVER_FILE
from tests.service.live_server import live_server
from tests.service.test_tuning import QUICK, SLOW
from tests.support import fill


def common(data_dir) -> list[str]:
    return ["--data-dir", str(data_dir), "--backbone-model", "tiny-vit-test"]


def test_search_and_tune_ask_the_server_that_holds_the_data_dir(tiny_backbone, tmp_path, capsys):
    data_dir = tmp_path / "data"
    with live_server(tiny_backbone, data_dir=data_dir) as (url, _):
        assert json.loads((data_dir / SERVER_FILE).read_text())["url"] == url
        with httpx.Client(base_url=url) as http:
            fill(http, name="shapes")
        capsys.readouterr()

        assert main(["search", "shapes", "a red thing", "-k", "3", *common(data_dir)]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0] == "adapter: none"
        assert len(lines) == 4
        assert all(line.split()[2].endswith(".png") and "(image " in line for line in lines[1:]), lines

        config = json.dumps({"method": "dual", "activation": "always", **QUICK})
        assert main(["tune", "shapes", "--wait", "--config", config, *common(data_dir)]) == 0
        out = capsys.readouterr().out
        assert "tuning job 1 queued for collection 1" in out
        assert "tuning job 1 succeeded: v1" in out
        assert main(["search", "1", "red", "-k", "2", "--url", url]) == 0  # by id, server named explicitly
        assert capsys.readouterr().out.startswith("adapter: v1\n")

        assert main(["tune", "no-such", *common(data_dir)]) == 2
        assert "not found" in capsys.readouterr().err
    assert not (data_dir / SERVER_FILE).exists()


def test_tune_wait_fails_when_the_job_is_cancelled(tiny_backbone, tmp_path, capsys):
    data_dir = tmp_path / "data"
    with live_server(tiny_backbone, data_dir=data_dir) as (url, _), httpx.Client(base_url=url) as http:
        cid = fill(http)
        codes = []
        config = json.dumps({"method": "dual", **SLOW})
        waiter = threading.Thread(target=lambda: codes.append(main(["tune", "c", "--wait", "--config", config,
                                                                    *common(data_dir)])))
        waiter.start()
        deadline = time.monotonic() + 60
        while not (jobs := http.get(f"/collections/{cid}/tuning-jobs").json()) or jobs[0]["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        http.post(f"/jobs/{jobs[0]['id']}/cancel")
        waiter.join(timeout=60)
        assert codes == [1]
        assert f"tuning job {jobs[0]['id']} cancelled: no version" in capsys.readouterr().out


def test_tune_refuses_without_a_server_even_with_a_stale_server_file(tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / SERVER_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9"}))  # left by a crashed server
    assert main(["tune", "c", *common(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "no server holds the data directory" in err
    assert "prompt-adapters serve" in err
    assert not (data_dir / SERVER_FILE).exists()  # whoever takes the lock next drops the stale file


@pytest.mark.slow
def test_the_cli_sends_its_api_key(tiny_backbone, tmp_path, capsys):
    data_dir = tmp_path / "data"
    assert main(["keys", "create", "--name", "me", "--scope", "admin", *common(data_dir)]) == 0
    key = capsys.readouterr().out.strip()
    with live_server(tiny_backbone, data_dir=data_dir) as (url, _):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            fill(http)
        assert main(["search", "c", "red", *common(data_dir)]) == 2
        assert "an API key is required" in capsys.readouterr().err
        assert main(["search", "c", "red", "-k", "1", "--key", key, *common(data_dir)]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_searching_through_a_server_loads_no_model(tiny_backbone, tmp_path):
    """Nor the settings class, the database layer or the lock library: the look-up and the call need none of them."""
    data_dir = tmp_path / "data"
    with live_server(tiny_backbone, data_dir=data_dir) as (url, _):
        with httpx.Client(base_url=url) as http:
            fill(http)
        script = ("import sys; from service.cli import main; "
                  f"code = main(['search', 'c', 'red', '-k', '2', '--data-dir', {str(data_dir)!r}]); "
                  "print('loaded:', sorted(m for m in ('torch', 'open_clip', 'faiss', 'numpy', 'sqlalchemy', 'pydantic', "
                  "'filelock') if m in sys.modules)); "
                  "sys.exit(code)")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    assert len([line for line in done.stdout.splitlines() if "(image " in line]) == 2


def test_the_data_dir_read_without_settings_agrees_with_settings(tmp_path, monkeypatch):
    from service.config import Settings
    from service.data_dir import named_data_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PAS_DATA_DIR", raising=False)
    assert named_data_dir(None) == Settings().data_dir == tmp_path / "data"  # the default
    monkeypatch.setenv("pas_data_dir", "from-env")  # any case, as pydantic-settings reads it
    assert named_data_dir(None) == Settings().data_dir == tmp_path / "from-env"
    assert named_data_dir("flag") == Settings(data_dir="flag").data_dir == tmp_path / "flag"
    monkeypatch.delenv("pas_data_dir")
    (tmp_path / ".env").write_text("PAS_DATA_DIR=from-dotenv\n")
    assert named_data_dir(None) is None  # only Settings reads .env files
    assert Settings().data_dir == tmp_path / "from-dotenv"
