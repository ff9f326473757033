"""Helpers that make a chapter honest: visible checks, source on the page, and the run report.

``check`` is how a chapter states a claim: it prints a pass line that readers see in the
rendered book; when the claim stops holding it prints a NOT HELD banner and the chapter goes on, or,
under ``GENBOOK_STRICT=1`` (``make test``, CI), raises with a clear message so nbval fails.
``finding`` states a measured result that is not a claim.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from genbook import page, runtime


class CheckFailed(AssertionError):
    """A chapter's claim did not hold in this run."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def check(name: str, condition: bool, value: Any = None, expect: str = "") -> None:
    """State a chapter claim: print ``PASS name: value (expect)``, or ``NOT HELD ...`` (``CheckFailed`` if strict).

    ``value`` is the measured number(s) the claim is about and ``expect`` the condition in words
    (e.g. ``"> 0.95"``); both appear on the page. Returns None, so a check can end a cell
    without its value being echoed a second time.

    Margins are chosen from each claim's spread over seeds 0-2, each with the host's native kernels and with
    ``ATEN_CPU_CAPABILITY=default`` (``make robustness``; results in ``bench/robustness.json``), so that they hold on
    other machines. A reader is still not stopped by a fluctuation: a claim that does not hold prints a conspicuous
    ``NOT HELD`` banner with its values, the chapter goes on, and the run report counts it. Under ``GENBOOK_STRICT=1``
    (set by ``make test``, so by CI) it raises :class:`CheckFailed` instead.
    """
    shown = "" if value is None else f": {_fmt(value)}"
    wanted = f" (expected {expect})" if expect else ""
    rt = runtime.current()
    ok = bool(condition)
    if rt is not None:
        rt.checks.append((name, ok, _fmt(value)))
        if rt.smoke:  # the full profile's sizes after a few steps: a claim cannot hold, so it is reported, not enforced
            print(f"SMOKE ({'held' if ok else 'not held'}, not enforced) {name}{shown}{wanted}")
            return
    if not ok:
        if not strict():
            calibrated = "" if rt is None or rt.profile == "fast" else " The full profile has not been calibrated on a GPU yet."
            bar = "!" * 100
            print(
                f"{bar}\nNOT HELD {name}{shown}{wanted}.\nThis claim did not hold in this run.{calibrated} The chapter goes "
                "on and the run report counts it; if you changed a setting, restore it, otherwise please report it with "
                f"the run report (GENBOOK_STRICT=1 makes this an error).\n{bar}"
            )
            return
        if rt is not None:
            _record(rt, {"failed check": name})
        raise CheckFailed(
            f"CHECK FAILED {name}{shown}{wanted}. The chapter's claim does not hold in this run; "
            "if you changed a setting, restore it, otherwise report this with the run report."
        )
    print(f"PASS {name}{shown}{wanted}")


def finding(name: str, value: Any, note: str = "") -> None:
    """State a measured result that is *not* a claim: it varies from run to run by more than a margin could absorb
    (a ranking that flips with the seed, a tendency of a small budget). It prints ``FINDING name: value (note)``,
    never raises, and is recorded beside the checks (run report, ``GENBOOK_REPORT``), so ``make robustness`` shows
    its spread over seeds and machines and the text can say how often it went which way."""
    rt = runtime.current()
    if rt is not None:
        rt.findings.append((name, _fmt(value)))
    print(f"FINDING {name}: {_fmt(value)}" + (f" ({note})" if note else ""))


def strict() -> bool:
    """True under ``GENBOOK_STRICT=1`` (``make test`` and CI): a claim that does not hold is an error."""
    return os.environ.get("GENBOOK_STRICT", "") not in ("", "0")


def static_output() -> bool:
    """True when outputs are being recorded for the rendered book (``GENBOOK_STATIC=1``, set by ``make execute``)."""
    return os.environ.get("GENBOOK_STATIC", "") not in ("", "0")


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm.auto progress bar, switched off when recording for the book (a frozen bar reads as 0%)."""
    kwargs.setdefault("mininterval", 0.5)
    kwargs["disable"] = kwargs.get("disable", False) or static_output()
    return tqdm(iterable, **kwargs)


def show_source(obj: Any) -> None:
    """Show the source of a function or class from the package, highlighted, in the notebook, formatted to the book's
    code column (``page.fit_to_page``: the package itself is formatted at 140 columns)."""
    source = page.fit_to_page(inspect.getsource(obj))
    module = inspect.getmodule(obj)
    where = f"{module.__name__}.{obj.__qualname__}" if module else obj.__qualname__
    try:
        from IPython.display import Markdown, display

        display(Markdown(f"`{where}`\n\n```python\n{source}```"))
    except ImportError:
        print(f"# {where}\n{source}")


def run_report(rt: runtime.Runtime | None = None) -> dict[str, Any]:
    """Print and return what produced this chapter's outputs: device, profile, seed, wall time, checks, versions."""
    rt = rt or runtime.current()
    if rt is None:
        raise RuntimeError("run_report() needs genbook.setup() to have been called first")
    passed = sum(ok for _, ok, _ in rt.checks)
    not_held = [name for name, ok, _ in rt.checks if not ok]
    report = {
        "profile": rt.profile,
        "device": runtime.device_name(rt.device),
        "cpu": runtime.cpu_model(),
        "torch threads": torch.get_num_threads(),
        "cpu kernels": runtime.cpu_kernels(),
        "seed": rt.seed,
        "wall time (s)": round(rt.elapsed(), 1),
        **_machine(rt),
        "checks passed": f"{passed}/{len(rt.checks)}",
        **({"checks not held": "; ".join(not_held)} if not_held else {}),
        **({"findings (not checked)": len(rt.findings)} if rt.findings else {}),
        **({"smoke mode": _smoke_summary(rt)} if rt.smoke else {}),
        "date": time.strftime("%Y-%m-%d"),
        **runtime.versions(),
    }
    peak = peak_memory_mb(rt.device)
    if peak is not None:
        report["peak GPU memory (MB)"] = peak
    width = max(len(k) for k in report)
    print("Run report")
    for key, value in report.items():
        print(f"  {key:<{width}}  {value}")
    _record(rt, report)
    return report


def _machine(rt: runtime.Runtime) -> dict[str, Any]:
    """How busy and how fast the machine was during the run: the wall time above means little without it."""
    out: dict[str, Any] = {"cpu use during the run": ", ".join(f"{k} {v}" for k, v in runtime.machine_load(rt.cpu_start).items())}
    if rt.probe_ms is not None:  # the probe after the run, once the load above is read
        out["speed probe (ms), before / after"] = f"{rt.probe_ms} / {runtime.speed_probe()}"
    return out


def _smoke_summary(rt: runtime.Runtime) -> str:
    """What a smoke run did, and its projected cost in the full profile on a T4 (``genbook.work``)."""
    text = f"checks reported, not enforced; training loops cut to {runtime.SMOKE_STEPS} steps"
    if rt.ledger is not None:
        from genbook import work

        loops = rt.ledger.as_dict()
        t4 = work.project_chapter(loops, "T4")
        text += (
            f"; {len(loops['loops'])} loops counted; projected full profile on a T4: {t4['seconds'] / 60:.1f} min, "
            f"{t4['peak memory GB']:.2f} GB for the largest training step"
        )
    return text


def _record(rt: runtime.Runtime, report: dict[str, Any]) -> None:
    """Append the run (report, wall time, every check) as a JSON line to ``GENBOOK_REPORT``, when it is set:
    how ``tools/bench.py`` collects each chapter's numbers."""
    path = os.environ.get("GENBOOK_REPORT")
    if path:
        checks = [{"name": n, "ok": ok, "value": v} for n, ok, v in rt.checks]
        findings = [{"name": n, "value": v} for n, v in rt.findings]
        line = {**report, "wall_seconds": round(rt.elapsed(), 2), "peak_gpu_mb": peak_memory_mb(rt.device),
                "peak_gpu_reserved_mb": peak_memory_mb(rt.device, reserved=True), "checks": checks,
                "findings": findings, **({"work": rt.ledger.as_dict()} if rt.ledger is not None else {})}  # fmt: skip
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def peak_memory_mb(device: torch.device, reserved: bool = False) -> float | None:
    """The most GPU memory this process's tensors have held (MB), on CUDA; None elsewhere. ``reserved``: the most
    PyTorch's caching allocator held from the GPU, which is what has to fit on the card."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_reserved(device) if reserved else torch.cuda.max_memory_allocated(device)
    return round(peak / 2**20, 1)
