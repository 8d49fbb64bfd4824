"""A real uvicorn server on 127.0.0.1 in a thread, with the options `prompt-adapters serve` uses."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

from service.app import create_app
from service.config import Settings
from service.http_limits import uvicorn_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(backbone, **settings):
    settings = Settings(host="127.0.0.1", port=free_port(), **settings)
    config = uvicorn.Config(create_app(settings, backbone), host=settings.host, port=settings.port,
                            log_level="warning", **uvicorn_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "server did not start"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}", settings
    finally:
        server.should_exit = True
        thread.join(timeout=30)
