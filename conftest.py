"""pytest configuration for the notebook runs (``make test-notebooks``: nbval, two pytest-xdist workers).

nbval starts each notebook's kernel with a plain ``jupyter_client.KernelManager`` on TCP ports, which races with the
other worker's kernel start (see ``tools/kernels.py``). Here nbval's kernel manager is replaced by one that puts its
kernel on IPC sockets in a private folder; nothing else about the run changes.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid

try:
    import nbval.kernel
except ImportError:  # nbval is in requirements.txt; without it there are no notebook tests to configure
    nbval = None

if nbval is not None:
    _FOLDER = tempfile.mkdtemp(prefix="gbk-")
    atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)

    class IPCKernelManager(nbval.kernel.KernelManager):
        """nbval's kernel manager with IPC sockets named ``<private folder>/<unique>-<n>`` instead of TCP ports."""

        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", f"{_FOLDER}/{uuid.uuid4().hex[:12]}")
            super().__init__(**kwargs)

    nbval.kernel.KernelManager = IPCKernelManager
