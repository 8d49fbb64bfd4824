"""Facts about the machine a benchmark ran on (one place for the quality and speed reports)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def gpu_name() -> str:
    """The GPU a run can use, or a plain statement that it used none."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return "none used (CPU only)"


def machine_info(versions: dict[str, str] | None = None) -> dict:
    cpu_model, ram_gb = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    import open_clip

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model, "ram_gb": ram_gb, "gpu": gpu_name(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, **(versions or {})},
    }
