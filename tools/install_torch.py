"""Install torch into the current interpreter without dragging a CUDA build onto a CPU box.

Order of preference:
1. torch already importable: nothing to do (Colab, a GPU box with its own build).
2. an NVIDIA GPU is visible (nvidia-smi): the default build from the package index.
3. no GPU: a local CPU wheel (`torch-*+cpu-<pytag>-*.whl`) from a pip find-links folder,
   else PyTorch's CPU-only index.

Run as `python tools/install_torch.py`; `make install` calls it before requirements.txt,
so the `torch>=2.1,<3` range there is already satisfied and installs nothing more.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys

SPEC = "torch>=2.1,<3"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_links_dirs() -> list[str]:
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith("find-links"):
            dirs += value.strip().strip("'\"").split()
    return [d.removeprefix("file://") for d in dirs if os.path.isdir(d.removeprefix("file://"))]


def local_cpu_wheel() -> str | None:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in find_links_dirs():
        wheels = sorted(glob.glob(os.path.join(folder, f"torch-2.*+cpu-{tag}-{tag}-*.whl")))
        if wheels:
            return wheels[-1]
    return None


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    if importlib.util.find_spec("torch") is not None:
        import torch

        print(f"torch {torch.__version__} already installed; leaving it alone")
        return
    if has_nvidia_gpu():
        pip(SPEC)
        return
    wheel = local_cpu_wheel()
    if wheel:
        pip(wheel)
    else:
        pip(SPEC, "--index-url", CPU_INDEX)


if __name__ == "__main__":
    main()
