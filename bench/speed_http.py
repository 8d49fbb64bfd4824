"""The HTTP half of ``bench.speed``: a real uvicorn server, batch uploads, concurrent searches.

The server is a subprocess (``uvicorn service.app:create_app --factory``, the same defaults as
``prompt-adapters serve``: one worker, access log on) on 127.0.0.1 with a fresh data directory.
Everything here talks to it over loopback HTTP only.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: Sequence[float], scale: float = 1.0) -> dict:
    arr = np.asarray(values, dtype=np.float64) * scale
    if not len(arr):
        return {"n": 0}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"n": int(len(arr)), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


@dataclass
class Server:
    proc: subprocess.Popen
    base_url: str
    log_path: Path
    command: list[str]
    env: dict
    health: dict | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully (lifespan exit)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(data_dir: Path, backbone_env: dict, batch_size: int, torch_threads: int,
                 startup_timeout: float = 180.0) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PAS_DATA_DIR": str(data_dir),
        "PAS_BATCH_SIZE": str(batch_size),
        "PAS_HOST": "127.0.0.1",
        "PAS_PORT": str(port),
        # torch (and FAISS) read this at start-up: the server gets the bench process's thread count.
        "OMP_NUM_THREADS": str(torch_threads),
        **backbone_env,
    })
    for key in ("PAS_DATABASE_URL", "PAS_IMPORT_ROOT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(port)]
    log_path = data_dir.parent / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path, command,
                    {k: v for k, v in env.items() if k.startswith("PAS_") or k in ("OMP_NUM_THREADS",)})
    deadline = time.monotonic() + startup_timeout
    with httpx.Client(base_url=server.base_url, timeout=5.0) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} during start-up:\n{server.log_tail()}")
            try:
                response = client.get("/healthz")
                if response.status_code == 200:
                    server.health = response.json()
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"server did not answer /healthz within {startup_timeout}s:\n{server.log_tail()}")
            time.sleep(0.2)


def create_collection(client: httpx.Client, name: str) -> int:
    response = client.post("/collections", json={"name": name})
    response.raise_for_status()
    return int(response.json()["id"])


# --------------------------------------------------------------------------- ingest

@dataclass
class UploadItem:
    filename: str
    png: bytes
    captions: list[str]
    category: str | None
    attributes: list[str]


def upload_batches(client: httpx.Client, collection_id: int, items: Sequence[UploadItem], batch: int,
                   server_pid: int | None = None) -> dict:
    """Upload ``items`` in consecutive multipart requests of ``batch`` files; one client, sequential."""
    server0 = process_cpu_seconds(server_pid) if server_pid else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    request_s = []
    accepted = 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        files = [("files", (it.filename, it.png, "image/png")) for it in chunk]
        metadata = json.dumps([{"captions": it.captions, "category": it.category, "attributes": it.attributes}
                               for it in chunk])
        t = time.perf_counter()
        response = client.post(f"/collections/{collection_id}/images", files=files, data={"metadata": metadata})
        request_s.append(time.perf_counter() - t)
        response.raise_for_status()
        body = response.json()
        if body["rejected"]:
            raise RuntimeError(f"the service rejected benchmark images: {body['rejected'][:3]}")
        accepted += sum(1 for a in body["accepted"] if not a["duplicate"])
    wall = time.perf_counter() - t0
    if accepted != len(items):
        raise RuntimeError(f"expected {len(items)} new images, the service accepted {accepted}")
    out = {"seconds": wall, "images_per_s": len(items) / wall, "client_cpu_s": time.process_time() - cpu0,
           "request_s": percentiles(request_s)}
    if server0 is not None and server_pid:
        out["server_cpu_s"] = process_cpu_seconds(server_pid) - server0
    return out


def bare_encode_loop(backbone, items: Sequence[UploadItem], batch: int) -> dict:
    """The same work without the service: decode PNG bytes, preprocess, encode_image, batch by batch."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    rows = 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = [Image.open(io.BytesIO(it.png)).convert("RGB") for it in chunk]
        rows += len(backbone.encode_images(images, batch_size=batch))
    wall = time.perf_counter() - t0
    assert rows == len(items)
    return {"seconds": wall, "images_per_s": len(items) / wall, "cpu_s": time.process_time() - cpu0}


# --------------------------------------------------------------------------- search

async def _search_level(base_url: str, collection_id: int | Sequence[int], queries: Sequence[str], clients: int,
                        k: int, max_requests: int, max_seconds: float, warmup: int, server_pid: int) -> dict:
    """Closed-loop clients; request i asks ``collection_id`` (or, given a sequence, its entry i, cyclically)."""
    targets = [collection_id] if isinstance(collection_id, int) else list(collection_id)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120.0) as client:

        async def run(limit: int, deadline: float, record: list, errors: list, offset: int) -> None:
            counter = iter(range(limit))

            async def worker() -> None:
                for i in counter:
                    if time.perf_counter() > deadline:
                        return
                    query = queries[(offset + i) % len(queries)]
                    url = f"/collections/{targets[(offset + i) % len(targets)]}/search"
                    t = time.perf_counter()
                    response = await client.post(url, json={"query": query, "k": k})
                    elapsed = time.perf_counter() - t
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    results = response.json()["results"]
                    if len(results) != k:
                        errors.append(f"{len(results)} results instead of {k}")
                        continue
                    record.append(elapsed)

            await asyncio.gather(*(worker() for _ in range(clients)))

        # Warm-up (not recorded): opens the keep-alive connections, wakes the server's threads.
        await run(warmup, time.perf_counter() + 60.0, [], [], offset=len(queries) // 2)
        latencies: list[float] = []
        errors: list[str] = []
        server_cpu0, cpu0 = process_cpu_seconds(server_pid), time.process_time()
        t0 = time.perf_counter()
        await run(max_requests, t0 + max_seconds, latencies, errors, offset=0)
        wall = time.perf_counter() - t0
        server_cpu = process_cpu_seconds(server_pid) - server_cpu0
        client_cpu = time.process_time() - cpu0
    return {
        "clients": clients,
        "requests_ok": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
        "latency_ms": percentiles(latencies, 1000.0),
        "latencies_ms": [round(v * 1000.0, 4) for v in latencies],
        "server_cpu_cores": server_cpu / wall if wall > 0 else 0.0,  # average cores busy in the server
        "client_cpu_cores": client_cpu / wall if wall > 0 else 0.0,  # ... and in this load generator
        "stopped_by": "time" if len(latencies) + len(errors) < max_requests else "requests",
    }


def search_level(base_url: str, collection_ids: Sequence[int], queries: Sequence[str], clients: int, k: int,
                 max_requests: int, max_seconds: float, server_pid: int) -> dict:
    """One level of closed-loop clients; request i searches ``collection_ids[i % len]``."""
    return asyncio.run(_search_level(base_url, collection_ids, queries, clients, k, max_requests, max_seconds,
                                     max(10, 2 * clients), server_pid))


def search_levels(base_url: str, collection_id: int, queries: Sequence[str], levels: Sequence[int], k: int,
                  max_requests: int, max_seconds: float, server_pid: int) -> list[dict]:
    out = []
    for clients in levels:
        out.append(asyncio.run(_search_level(base_url, collection_id, queries, clients, k, max_requests,
                                             max_seconds, max(10, 2 * clients), server_pid)))
    return out


async def _get_level(base_url: str, path: str, clients: int, seconds: float, server_pid: int) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0) as client:
        for _ in range(2 * clients):  # warm-up, not recorded
            (await client.get(path)).raise_for_status()
        done = 0
        server_cpu0, t0 = process_cpu_seconds(server_pid), time.perf_counter()
        deadline = t0 + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await client.get(path)).raise_for_status()
                done += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
        server_cpu = process_cpu_seconds(server_pid) - server_cpu0
    return {"path": path, "clients": clients, "requests": done, "throughput_rps": done / wall,
            "server_cpu_cores": server_cpu / wall, "server_cpu_ms_per_request": 1000.0 * server_cpu / max(done, 1)}


def framework_floor(base_url: str, collection_id: int, clients: int, seconds: float, server_pid: int) -> list[dict]:
    """What a request costs the server before any search work: GET /healthz (routing, middleware, JSON) and
    GET /collections/{id} (plus the access check and one database read), at ``clients`` closed-loop clients."""
    return [asyncio.run(_get_level(base_url, path, clients, seconds, server_pid))
            for path in ("/healthz", f"/collections/{collection_id}")]
