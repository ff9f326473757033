"""Kernels started by the tools and by nbval use IPC sockets, so two processes starting kernels at once cannot race
for a TCP port (tools/kernels.py; CI lost a run to that race)."""

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kernels", ROOT / "tools" / "kernels.py")
kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernels)

# the kernel reports the transport and the socket address it bound
PROBE = "from ipykernel.kernelapp import IPKernelApp\napp = IPKernelApp.instance()\nprint(app.transport, app.ip)"


def _probe_notebook() -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)])


def test_tools_start_kernels_on_ipc_sockets(tmp_path):
    # four kernels started at the same moment, as make test-smoke and tools/robustness.py start two
    notebooks = [_probe_notebook() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda nb: kernels.execute(nb, 120, tmp_path), notebooks))
    said = [nb.cells[0].outputs[0]["text"].split() for nb in notebooks]
    assert all(transport == "ipc" for transport, _ in said), said
    assert len({ip for _, ip in said}) == 4, f"each kernel needs a socket folder of its own: {said}"
    assert all(len(ip) < 90 for _, ip in said), "Unix socket paths are limited to about 100 characters"


def test_nbval_kernels_use_ipc_sockets():
    # the repository's conftest.py replaces nbval's kernel manager; this test runs under that conftest
    import nbval.kernel

    km, other = nbval.kernel.KernelManager(kernel_name="python3"), nbval.kernel.KernelManager(kernel_name="python3")
    assert km.transport == "ipc" and other.transport == "ipc"
    assert km.ip != other.ip and len(km.ip) < 90


def test_bench_reports_a_kernel_that_did_not_start_and_goes_on(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench", ROOT / "tools" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class DeadOnArrival:
        def execute(self):
            raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(bench, "notebook_client", lambda *args: DeadOnArrival())
    path = tmp_path / "99_probe.ipynb"
    nbformat.write(_probe_notebook(), path)
    row = bench.run_chapter(path, "fast", 60)
    assert row["ran"] is False and row["ok"] is False
    assert row["error"].startswith("kernel did not start") and "kernel_info" in row["error"]
