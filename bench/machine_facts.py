"""What a benchmark's report says of the machine it ran on: one lookup for every bench."""

from __future__ import annotations

import platform
import subprocess

import torch


def gpu_driver() -> str:
    """The NVIDIA driver's version (``nvidia-smi``), or "?" where it cannot be read."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    return found.splitlines()[0] if found else "?"


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "missing"
    return str(triton.__version__)


def machine_facts(gpu: bool) -> dict[str, str]:
    """Python, torch and the processor; with ``gpu``, the device, its driver, CUDA
    and Triton too."""
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if gpu:
        facts["gpu"] = torch.cuda.get_device_name()
        facts["driver"] = gpu_driver()
        facts["cuda"] = str(torch.version.cuda)
        facts["triton"] = triton_version()
    return facts
