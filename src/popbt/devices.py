"""Devices: which ones a worker may be given, which ones exist here, and whether one works.

A device is a torch device string (``cpu``, ``cuda:1``, ``mps``). The command line checks
its spelling before anything is written; a worker probes its device before it claims work,
so a GPU worker on a machine without that GPU stops with one line instead of failing every
member it touches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import ConfigError, WorkerFault

DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|hpu|npu|mtia|xla)(:\d+)?$")


def check_device(device: str, what: str = "--device") -> str:
    """The device string, or ConfigError if torch would not understand it."""
    if not isinstance(device, str) or not DEVICE.match(device.strip()):
        raise ConfigError(f"{what} {device!r} is not a device: use cpu, cuda, cuda:N, mps or xpu:N")
    return device.strip()


def detect_devices() -> list[str]:
    """The GPUs present (when torch is installed and sees them), else the CPU."""
    try:
        import torch
    except ImportError:
        return ["cpu"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def parse_devices(devices: str | Sequence[str] | None) -> list[str]:
    """``--devices`` as a list of checked device strings (default: what ``detect_devices`` finds)."""
    if devices is None:
        return detect_devices()
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    items = [d.strip() for d in items if isinstance(d, str) and d.strip()] if items else []
    if not items:
        raise ConfigError("--devices is empty: give e.g. cpu or cuda:0,cuda:1")
    return [check_device(d, "--devices entry") for d in items]


def probe(device: str) -> None:
    """Raise WorkerFault unless a tensor can be made on ``device`` here. The CPU needs nothing
    (a spec that does not use torch runs on it)."""
    if device == "cpu":
        return
    try:
        import torch
    except ImportError:
        raise WorkerFault(f"device {device} is unusable: torch is not installed") from None
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise WorkerFault(f"device {device} is unusable: torch sees no CUDA device on this machine")
        if int(index or 0) >= count:
            raise WorkerFault(f"device {device} is unusable: this machine has cuda:0 to cuda:{count - 1}")
    try:
        (torch.zeros(1, device=device) + 1).cpu()
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WorkerFault(f"device {device} is unusable: {text}") from None
