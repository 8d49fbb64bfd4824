"""The server and the CLI's writing commands never work on one data directory at the same time."""

from __future__ import annotations

import pytest

from service.cli import main
from service.data_lock import DataDirBusy, hold_data_dir
from tests.support import png_bytes


def test_cli_refuses_a_data_dir_a_server_holds(make_client, tmp_path, capsys):
    client = make_client()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(1))
    common = ["--data-dir", str(tmp_path / "data"), "--backbone-model", "tiny-vit-test"]
    for argv in (["ingest", str(folder), "--collection", "c"], ["reembed"]):  # search asks the server instead
        assert main([*argv, *common]) == 2
        err = capsys.readouterr().err
        assert "is in use by another process" in err
        assert "stop it before running prompt-adapters" in err
    assert client.get("/collections").json() == []  # the CLI wrote nothing
    client.__exit__(None, None, None)
    assert main(["ingest", str(folder), "--collection", "c", *common]) == 0  # free again once the server stopped


def test_server_refuses_a_data_dir_the_cli_holds(make_client, tmp_path):
    with hold_data_dir(tmp_path / "data", "prompt-adapters ingest"):
        with pytest.raises(DataDirBusy, match="in use"):
            make_client()
    assert make_client().get("/collections").status_code == 200
