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


# The /proc/cpuinfo fields that tell two CPUs sold under one model name apart.
CPU_ID_FIELDS = ("cpu family", "model", "stepping")


def machine_info(versions: dict[str, str] | None = None) -> dict:
    """``cpu_id`` and ``torch_cpu_kernels`` tell two CPUs of one model name apart. torch picks its
    kernels by instruction set, and kernels may round differently: the same code and seed trained to
    a different adapter on another machine (2.6 points of val R@1 on one benchmark row; docs/bench/history.md,
    "Seeded runs repeat only on the same CPU"). Records can be expected to repeat exactly only when
    these match."""
    cpu_model, ram_gb = None, None
    cpu_fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", *CPU_ID_FIELDS) and key not in cpu_fields:
                cpu_fields[key] = value.strip()
            if not line.strip() and cpu_fields:
                break  # the first processor's block is enough
        cpu_model = cpu_fields.get("model name")
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    import open_clip

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "cpu_id": " / ".join(f"{k} {cpu_fields[k]}" for k in CPU_ID_FIELDS if k in cpu_fields) or None,
        "torch_cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "ram_gb": ram_gb, "gpu": gpu_name(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, **(versions or {})},
    }
