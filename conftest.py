"""pytest configuration for the notebook runs (``make test-notebooks``: nbval, two pytest-xdist workers).

nbval starts each notebook's kernel with a plain ``jupyter_client.KernelManager`` on TCP ports, which races with the
other worker's kernel start (see ``tools/kernels.py``). Here nbval's kernel manager is replaced by one that puts its
kernel on IPC sockets in a private folder (``kernels.ipc_config``); nothing else about the run changes.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

try:
    import nbval.kernel
except ImportError:  # nbval is in requirements.txt; without it there are no notebook tests to configure
    nbval = None

if nbval is not None:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))
    from kernels import ipc_config

    _FOLDER = tempfile.mkdtemp(prefix="gbk-")
    atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)

    class IPCKernelManager(nbval.kernel.KernelManager):
        """nbval's kernel manager with IPC sockets in a folder of each kernel's own instead of TCP ports."""

        def __init__(self, **kwargs):
            kwargs.setdefault("config", ipc_config(tempfile.mkdtemp(dir=_FOLDER)))
            super().__init__(**kwargs)

    nbval.kernel.KernelManager = IPCKernelManager
