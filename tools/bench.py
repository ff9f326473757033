"""Run the chapters in one profile and record what each cost and measured: ``bench/gpu.sh`` calls this.

Usage: python tools/bench.py [--profile full|fast] [--chapters 01 06 ...] [--out FILE.json] [--timeout SECONDS]
       python tools/bench.py --smoke [--count] [--chapters ...] [--max-seconds S]

``--smoke`` runs the ``full`` profile in smoke mode (``GENBOOK_SMOKE=1``: full sizes, training loops cut to a few
steps, checks reported and not enforced; :mod:`genbook.runtime`), on the CPU unless ``GENBOOK_DEVICE`` says
otherwise. A chapter fails if a cell raises, or if it takes longer than ``--max-seconds`` (a loop that smoke mode
does not cut). From the work each chapter's run counted (:mod:`genbook.work`: one step of every training loop, and
with ``--count`` everything else too, about three times slower) it projects the full profile's time and peak memory
on a T4, an A100 and an H200, into ``bench/projection.json`` and a table.

Each chapter runs from a copy (the committed notebook is not touched) in a fresh kernel with ``GENBOOK_PROFILE``
set, ``GENBOOK_STATIC=1`` and ``GENBOOK_REPORT`` pointing at a scratch file, where the chapter's ``run_report`` (or
a failing check) writes its record. For each chapter the JSON holds the wall time (kernel start included), the
chapter's own time, peak GPU memory (CUDA only: allocated by tensors, and reserved by PyTorch's allocator, which
decides whether it fits a 16 GB T4), and every check's name, result and
measured value: the chapter's key metrics. A table is printed at the end. Exit status 1 if any chapter failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from kernels import notebook_client  # noqa: E402

T4_MB = 15 * 1024  # a 16 GB T4 leaves about 15 GB to PyTorch's tensors


def chapters(selected: list[str] | None) -> list[Path]:
    paths = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    if not selected:
        return paths
    chosen = [p for p in paths if any(p.name.startswith(s) or p.stem == s for s in selected)]
    unknown = [s for s in selected if not any(p.name.startswith(s) or p.stem == s for p in paths)]
    if unknown:
        raise SystemExit(f"no chapter matches {unknown}; chapters are {[p.stem for p in paths]}")
    return chosen


def run_chapter(path: Path, profile: str, timeout: int, smoke: str = "0") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {"GENBOOK_PROFILE": profile, "GENBOOK_STATIC": "1", "GENBOOK_REPORT": str(report), "GENBOOK_SMOKE": smoke}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the kernel inherits this process's environment
        nb = nbformat.read(path, as_version=4)
        client = notebook_client(nb, tmp, timeout, path.parent)  # IPC sockets in tmp: no port race with a parallel run
        start, error = time.perf_counter(), None
        try:
            client.execute()
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            error = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        except RuntimeError as exc:  # the kernel did not start (nbclient: "Kernel died before replying to kernel_info")
            error = f"kernel did not start: {exc}"[:300]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        wall = time.perf_counter() - start
        lines = report.read_text().splitlines() if report.exists() else []
    rec = json.loads(lines[-1]) if lines else {}
    checks = rec.get("checks", [])
    peak, reserved = rec.get("peak_gpu_mb"), rec.get("peak_gpu_reserved_mb")
    return {
        "chapter": path.stem,
        "ran": error is None,  # every cell ran (in full, a claim that does not hold is reported, not raised)
        "ok": error is None and "failed check" not in rec and bool(checks) and all(c["ok"] for c in checks),
        "error": error,
        "wall_seconds": round(wall, 1),
        "chapter_seconds": rec.get("wall_seconds"),
        "peak_gpu_mb": peak,
        "peak_gpu_reserved_mb": reserved,
        "fits_t4": None if reserved is None else reserved < T4_MB,  # what the allocator held, not just the tensors
        "checks_passed": sum(c["ok"] for c in checks),
        "checks_total": len(checks),
        "failed_check": rec.get("failed check"),
        "not_held": [c["name"] for c in checks if not c["ok"]],
        "device": rec.get("device"),
        "cpu_use": rec.get("cpu use during the run"),  # this process's cores, other processes', hypervisor steal
        "speed_probe_ms": rec.get("speed probe (ms), before / after"),
        "metrics": {c["name"]: c["value"] for c in checks},
        "findings": {f["name"]: f["value"] for f in rec.get("findings", [])},
        **({"work": rec["work"]} if "work" in rec else {}),
    }


def smoke_row(row: dict, max_seconds: float) -> dict:
    """A smoke run's verdict (every cell ran, within ``max_seconds``; checks are not enforced) and its projection."""
    from genbook import work

    ok = row["ran"] and "work" in row and row["wall_seconds"] <= max_seconds
    why = row["error"] or (None if "work" in row else "no run report") or (None if ok else f"over {max_seconds:.0f} s")
    out = {k: row[k] for k in ("chapter", "wall_seconds", "checks_total", "error")} | {"ok": ok, "why": why}
    if "work" in row:
        out["loops"] = [{k: r[k] for k in ("desc", "planned", "ran")} for r in row["work"]["loops"]]
        out["projection"] = {
            gpu: {k: round(v, 3) if isinstance(v, float) else v for k, v in work.project_chapter(row["work"], gpu).items()}
            for gpu in work.GPUS
        }
        out["work"] = row["work"]
    return out


def smoke_table(rows: list[dict]) -> str:
    head = (
        "| chapter | smoke run | training loops | projected `full` minutes: T4 / A100 / H200 | peak memory GB (largest training step) |\n"
        "|---|---|---|---|---|"
    )
    body = []
    for r in rows:
        p = r.get("projection")
        mins = " / ".join(f"{p[g]['seconds'] / 60:.1f}" for g in ("T4", "A100", "H200")) if p else "n/a"
        if p and p["T4"]["other seconds"] is None:
            mins += " (training only)"
        mem = f"{p['T4']['peak memory GB']:.2f}" if p else "n/a"
        state = f"ok, {r['wall_seconds']:.0f} s" if r["ok"] else f"FAILED ({r['why']})"
        body.append(f"| {r['chapter']} | {state} | {len(r.get('loops', []))} | {mins} | {mem} |")
    return "\n".join([head, *body])


def table(rows: list[dict]) -> str:
    head = "| chapter | ok | wall s | chapter s | peak GPU MB (reserved) | fits T4 | checks |\n|---|---|---|---|---|---|---|"
    body = []
    for r in rows:
        peak = "n/a" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f} ({r['peak_gpu_reserved_mb']:.0f})"
        fits = "n/a" if r["fits_t4"] is None else ("yes" if r["fits_t4"] else "NO")
        body.append(
            f"| {r['chapter']} | {'yes' if r['ok'] else 'NO'} | {r['wall_seconds']:.0f} | {r['chapter_seconds'] or 'n/a'} | "
            f"{peak} | {fits} | {r['checks_passed']}/{r['checks_total']} |"
        )
    return "\n".join([head, *body])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=("fast", "full"), default=None, help="default: full with CUDA, fast otherwise")
    p.add_argument("--chapters", nargs="*", default=None, help="chapter number prefixes (01 06) or stems; default all")
    p.add_argument("--out", default=None, help="JSON file (default bench/results-PROFILE-HOST.json)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run")
    p.add_argument("--smoke", action="store_true", help="full sizes, loops cut to a few steps; projects the full run's cost")
    p.add_argument("--max-seconds", type=float, default=120, help="with --smoke: the most one chapter may take")
    p.add_argument("--count", action="store_true", help="with --smoke: count all work, not only one step per loop (slower)")
    args = p.parse_args(argv)
    import torch

    if args.smoke:
        return smoke(args)

    profile = args.profile or ("full" if torch.cuda.is_available() else "fast")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out = Path(args.out) if args.out else ROOT / "bench" / f"results-{profile}-{platform.node() or 'host'}.json"
    rows = []
    for path in chapters(args.chapters):
        row = run_chapter(path, profile, args.timeout)
        rows.append(row)
        status = "ok" if row["ok"] else f"FAILED ({row['failed_check'] or row['error']})"
        print(f"{row['chapter']}: {row['wall_seconds']:.0f} s, {row['checks_passed']}/{row['checks_total']} checks, {status}", flush=True)
    result = {
        "profile": profile,
        "gpu": gpu,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "total_seconds": round(sum(r["wall_seconds"] for r in rows), 1),
        "chapters": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{profile} profile on {gpu or 'CPU'}; {result['total_seconds']:.0f} s in all; written to {out}\n")
    print(table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


def smoke(args) -> int:
    import torch

    out = Path(args.out) if args.out else ROOT / "bench" / "projection.json"
    rows = []
    for path in chapters(args.chapters):
        row = smoke_row(run_chapter(path, "full", args.timeout, smoke="count" if args.count else "1"), args.max_seconds)
        rows.append(row)
        print(f"{row['chapter']}: smoke {row['wall_seconds']:.0f} s, {'ok' if row['ok'] else 'FAILED: ' + str(row['why'])}", flush=True)
    from genbook import runtime, work

    result = {
        "what": "the full profile in smoke mode on this machine, and its cost projected on GPUs from the work counted",
        "cpu": runtime.cpu_model(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "smoke_steps": runtime.SMOKE_STEPS,
        "smoke_samples": runtime.SMOKE_SAMPLES,
        "total_seconds": round(sum(r["wall_seconds"] for r in rows), 1),
        "assumptions": {k: v[0] for k, v in work.ASSUMPTIONS.items()} | {g.name: g.source for g in work.GPUS.values()},
        "chapters": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nsmoke mode: {result['total_seconds']:.0f} s in all; written to {out}\n")
    print(smoke_table(rows))
    print()
    print(work.assumptions_table())
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
