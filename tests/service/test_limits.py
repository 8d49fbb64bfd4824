"""Bounded requests against a real uvicorn server on loopback: body size while streaming, timeouts, a cap."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.service.live_server import live_server

LIMIT = 1024 * 1024


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_response(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True once the server closes (whatever it still sends before is read and dropped)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


@pytest.fixture
def server(tiny_backbone, tmp_path):
    with live_server(tiny_backbone, data_dir=tmp_path / "data", max_request_bytes=LIMIT, body_timeout_s=1.0,
                     header_timeout_s=1.0, keep_alive_s=1, max_connections=12) as (base, settings):
        cid = httpx.post(f"{base}/collections", json={"name": "c"}, headers={"Host": "localhost"}).json()["id"]
        yield base, settings, cid


def test_chunked_upload_is_cut_off_at_the_limit(server):
    """No Content-Length: the bytes are counted as they arrive, and reading stops past the limit."""
    base, settings, cid = server
    sock = connect(base)
    boundary = "b0undary"
    sock.sendall((f"POST /collections/{cid}/images HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
    piece = b"\0" * 65536
    sent, planned = 0, 64 * LIMIT
    try:
        while sent < planned:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    response = read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"code":"body_too_large"' in response.replace(b" ", b"")
    assert sent < planned  # the server stopped reading long before the client's 64 MB were through
    spool = settings.data_dir / "tmp"
    assert spool.is_dir()
    assert not any(spool.iterdir())  # spooled under the data dir, nothing left behind


def test_declared_length_over_the_limit_is_refused_before_reading(server):
    base, _, cid = server
    sock = connect(base)
    sock.sendall(b"POST /collections/%d/images HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
                 b"Content-Type: multipart/form-data; boundary=x\r\n\r\nxx" % (cid, LIMIT + 1))
    response = read_response(sock)  # answered at once, from the header alone
    sock.close()
    assert response.startswith(b"HTTP/1.1 413")
    assert b"body_too_large" in response


def test_slow_body_gets_408(server):
    base, _, cid = server
    sock = connect(base)
    sock.sendall(b"POST /collections/%d/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"query\":" % cid)
    response = read_response(sock)  # the server answers, then closes: the body never completed
    sock.close()
    assert response.startswith(b"HTTP/1.1 408"), response[:200]


def test_half_sent_headers_are_dropped_and_the_connection_cap_holds(server):
    base, settings, cid = server
    stalled = []
    for _ in range(settings.max_connections + 4):
        sock = connect(base)
        sock.sendall(b"GET /collections HTTP/1.1\r\nHost: local")  # and nothing more
        stalled.append(sock)
    # Over the cap, a complete request is turned away with 503 instead of queueing forever.
    over = httpx.get(f"{base}/healthz", headers={"Host": "localhost"}, timeout=10)
    assert over.status_code == 503
    # The header deadline closes every stalled connection ...
    assert all(closed_by_server(sock, within=10) for sock in stalled)
    for sock in stalled:
        sock.close()
    # ... after which the server answers normally again.
    deadline = time.monotonic() + 10
    while (status := httpx.get(f"{base}/healthz", headers={"Host": "localhost"}).status_code) == 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status == 200


def test_idle_keep_alive_connections_are_closed(server):
    base, _, _ = server
    sock = connect(base)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    sock.settimeout(10)
    assert sock.recv(12) == b"HTTP/1.1 200"
    assert closed_by_server(sock, within=10)  # after keep_alive_s of silence
    sock.close()
