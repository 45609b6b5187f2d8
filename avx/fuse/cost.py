"""What a run cost: wall time, epochs, memory peaks, size and inference speed.

Recorded in ``metrics.json`` (``cost``) by every training run, so a sweep's report can
show a cost column beside the scores. Peaks are the process's: the resident-set peak
is reset when training starts (Linux ``/proc/self/clear_refs``; elsewhere the peak of
the whole process, said by ``rss_since``), the GPU peak is torch's allocator peak.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch


def reset_peaks(device: str) -> str:
    """Start measuring peaks now; returns what the RSS peak covers (``run`` or ``process``)."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return "run"
    except OSError:
        return "process"


def peak_rss_mib() -> float:
    """The resident-set peak since :func:`reset_peaks` (Linux), else of the process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)


def peak_gpu_mib(device: str) -> float | None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return None


def cost_report(
    *,
    wall_seconds: float,
    history: list[dict[str, Any]],
    parameters: int,
    device: str,
    rss_since: str,
    inference_seconds: float,
    clips: int,
    frames: int,
) -> dict[str, Any]:
    """The ``cost`` entry of ``metrics.json``. Inference speed is the batched test pass
    (reading included), frames counted over every stream's real frames."""
    per_epoch = [h["seconds"] for h in history if "seconds" in h]
    return {
        "wall_seconds": round(wall_seconds, 2),
        "epochs": len(history),
        "seconds_per_epoch": round(sum(per_epoch) / len(per_epoch), 3) if per_epoch else None,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_since": rss_since,
        "peak_gpu_mib": peak_gpu_mib(device),
        "parameters": int(parameters),
        "inference_clips_per_second": round(clips / inference_seconds, 2) if inference_seconds > 0 else None,
        "inference_frames_per_second": round(frames / inference_seconds, 1)
        if inference_seconds > 0
        else None,
        "device": str(device),
    }
