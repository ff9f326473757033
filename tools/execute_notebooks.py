"""Execute chapter notebooks in place, keeping their outputs, and print each one's wall time.

Usage: python tools/execute_notebooks.py chapters/01_introduction.ipynb [...]
The profile comes from GENBOOK_PROFILE (default auto). A notebook that fails is left unchanged
on disk and the script exits non-zero after trying the others.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import execute as run_cells  # noqa: E402


def execute(path: Path, timeout: int = 1800) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    run_cells(nb, timeout, path.parent)  # a kernel on IPC sockets (tools/kernels.py)
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def main(paths: list[str]) -> int:
    failed = []
    for p in map(Path, paths):
        try:
            print(f"{p}: {execute(p):.1f} s", flush=True)
        except CellExecutionError as exc:
            print(f"{p}: FAILED\n{exc}", flush=True)
            failed.append(p)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
