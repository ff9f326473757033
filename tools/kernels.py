"""Jupyter kernels on IPC sockets in a private folder, for every tool here that starts kernels in parallel.

By default a kernel talks over TCP on ports its client picks: the client binds five sockets to free ports, closes
them, writes the ports into the connection file, and the kernel binds them a moment later. Another process that
starts a kernel in that moment can take one of those ports, and the kernel dies at start with ``ZMQError: Address
already in use`` (jupyter/jupyter_client and nteract/papermill#511 describe the race). ``make test-smoke`` starts two
kernels at the same instant, ``make test-notebooks`` and ``tools/robustness.py`` two at a time; CI lost a run to it
(stop 50, 2026-12-07). Over IPC a kernel's sockets are files named after a path in a folder of its own, so no other
process can take them. (Unix domain socket paths are limited to about 100 characters, hence a fresh short folder
under the system's temporary directory rather than Jupyter's runtime folder under HOME.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from traitlets.config import Config


def ipc_config(folder: str | Path) -> Config:
    """Configuration that puts a kernel manager's kernels on IPC sockets named ``<folder>/kernel-<n>``."""
    return Config({"KernelManager": {"transport": "ipc", "ip": str(Path(folder) / "kernel")}})


def notebook_client(nb: nbformat.NotebookNode, folder: str | Path, timeout: int, cwd: Path) -> NotebookClient:
    """An nbclient runner for ``nb`` (kernel ``python3``, working directory ``cwd``) whose kernel uses IPC in ``folder``:
    one kernel at a time per folder, since two kernels there would pick the same numbered socket files."""
    return NotebookClient(nb, timeout=timeout, kernel_name="python3", config=ipc_config(folder), resources={"metadata": {"path": str(cwd)}})


def execute(nb: nbformat.NotebookNode, timeout: int, cwd: Path) -> None:
    """Run every cell of ``nb`` in place in a fresh IPC kernel; nbclient's exceptions propagate."""
    with tempfile.TemporaryDirectory(prefix="gbk-") as folder:
        notebook_client(nb, folder, timeout, cwd).execute()
