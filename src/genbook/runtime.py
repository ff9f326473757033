"""Profiles, devices, precision and seeding: what a chapter decides before it trains anything.

Every chapter starts with ``rt = genbook.setup()``. The returned :class:`Runtime` holds the
profile (``fast`` on a CPU, ``full`` on a GPU), the device, the AMP dtype and the seed, and
every size in a chapter comes from ``rt.pick(fast=..., full=...)`` so nothing is written twice.

Environment variables (see the book's "How to run" page):

| variable          | values                          | default |
| ----------------- | ------------------------------- | ------- |
| ``GENBOOK_PROFILE`` | ``fast``, ``full``, ``auto``  | ``auto`` (``full`` with CUDA, else ``fast``) |
| ``GENBOOK_DEVICE``  | ``auto``, ``cpu``, ``cuda``, ``mps`` | ``auto`` |
| ``GENBOOK_SEED``    | an integer                    | the seed passed to ``setup`` |
| ``GENBOOK_THREADS`` | an integer                    | torch's default |
| ``GENBOOK_SMOKE``   | ``1`` (``count``: also count all work) | off |

Sizes, lengths and sample counts are told apart, so that **smoke mode** (``GENBOOK_SMOKE=1``) can run the ``full``
profile's exact code paths and sizes on a CPU in a minute or so, as a test of the GPU path:

- ``rt.pick(fast=..., full=...)`` is a size (a width, ``T``, an image or data set size, a batch size): smoke mode
  keeps the ``full`` value;
- ``rt.steps(fast=..., full=...)`` is a training length: in smoke mode at most :data:`SMOKE_STEPS`, remembering the
  planned one (:class:`Length`); every training loop (``train.fit``, ``gan.train_gan``, the other trainers of the
  package, and ``rt.loop`` for a loop written in a chapter) also cuts whatever it is given, and counts one step's
  work (:mod:`genbook.work`);
- ``rt.samples(fast=..., full=...)`` is a number of samples to draw or score: smoke mode caps it at
  :data:`SMOKE_SAMPLES`.

In smoke mode a chapter's checks are reported, never enforced (they cannot hold after three steps); an exception or a
shape error still fails the run (on the CPU it cannot see a tensor on the wrong device, nor CUDA-only branches).
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

PROFILES = ("fast", "full", "auto")
SMOKE_STEPS = 3  # training steps per loop in smoke mode
SMOKE_SAMPLES = 20  # samples per ``rt.samples`` count in smoke mode (a multiple of 10, for digits of every class; the
# fewest that metrics.score_digits takes)
DEVICES = ("auto", "cpu", "cuda", "mps")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting (profile, device, dataset name...) that is not one of the valid choices."""


class Length(int):
    """A training length in smoke mode: the steps that run (the int itself, at most :data:`SMOKE_STEPS`) and the
    steps the ``full`` profile plans (``.planned``), which the cost projection multiplies by. Sums, differences,
    products and floor divisions with ints act on the plan, and what runs follows it as in ``rt.steps``: ``STEPS // 2``
    plans half and runs ``min(half, SMOKE_STEPS)``. Arithmetic with a float gives a plain float."""

    planned: int

    def __new__(cls, value: int, planned: int):
        obj = super().__new__(cls, value)
        obj.planned = int(planned)
        return obj

    def __repr__(self) -> str:
        return f"Length({int(self)}, planned={self.planned})"

    def __getnewargs__(self):  # pickle and copy.deepcopy rebuild it with both numbers
        return int(self), self.planned

    def _both(self, other, op, swap=False):
        if not isinstance(other, int) or isinstance(other, bool):
            return NotImplemented  # a float: Python falls back to float arithmetic, which leaves the plan behind
        mine, theirs = self.planned, getattr(other, "planned", other)
        planned = max(op(theirs, mine) if swap else op(mine, theirs), 0)
        return Length(min(planned, SMOKE_STEPS), planned)  # what runs follows the plan, as in rt.steps


for _name, _op, _swap in [("add", int.__add__, False), ("radd", int.__add__, True), ("sub", int.__sub__, False),
                          ("rsub", int.__sub__, True), ("mul", int.__mul__, False), ("rmul", int.__mul__, True),
                          ("floordiv", int.__floordiv__, False)]:  # fmt: skip
    setattr(Length, f"__{_name}__", lambda self, other, _op=_op, _swap=_swap: self._both(other, _op, _swap))


def smoke_mode() -> bool:
    """True under ``GENBOOK_SMOKE=1``: the ``full`` profile's sizes with every training loop cut to a few steps."""
    return os.environ.get("GENBOOK_SMOKE", "") not in ("", "0")


def resolve_profile(name: str | None = None) -> str:
    """Return ``fast`` or ``full`` from ``name`` or ``GENBOOK_PROFILE`` (``auto`` picks by CUDA; smoke mode is
    ``full``)."""
    raw = name if name is not None else os.environ.get("GENBOOK_PROFILE", "auto")
    value = raw.strip().lower()
    if value not in PROFILES:
        raise ConfigError(
            f"unknown profile {raw!r}; valid profiles are {', '.join(PROFILES)} "
            "(set GENBOOK_PROFILE to one of them, or leave it unset for 'auto')"
        )
    if smoke_mode():
        if value == "fast":
            raise ConfigError(
                "GENBOOK_SMOKE=1 runs the full profile's sizes with short loops; it cannot run the fast profile. "
                "Unset GENBOOK_PROFILE (or set it to full), or unset GENBOOK_SMOKE."
            )
        return "full"
    if value == "auto":
        return "full" if torch.cuda.is_available() else "fast"
    return value


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | None = None) -> torch.device:
    """Return the device named by ``name`` or ``GENBOOK_DEVICE``; ``auto`` prefers cuda, then mps.

    Asking for a device this machine does not have raises :class:`ConfigError` saying so.
    """
    raw = name if name is not None else os.environ.get("GENBOOK_DEVICE", "auto")
    value = raw.strip().lower()
    if value.startswith("cuda:"):
        value, index = "cuda", value
    else:
        index = value
    if value not in DEVICES:
        raise ConfigError(f"unknown device {raw!r}; valid devices are {', '.join(DEVICES)}")
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if value == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"GENBOOK_DEVICE={raw!r} asks for CUDA, but this machine has no usable CUDA GPU "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False). "
            "Unset GENBOOK_DEVICE or set it to 'cpu'; on Colab, pick a GPU runtime first."
        )
    if value == "mps" and not _mps_available():
        raise ConfigError(f"GENBOOK_DEVICE={raw!r} asks for Apple MPS, which this machine does not have")
    return torch.device(index)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device``: bf16 on GPUs that have it in hardware (Ampere, compute capability 8, and
    later), fp16 on older ones such as Colab's T4, none on CPU. (``torch.cuda.is_bf16_supported()`` also says yes
    where bf16 is only emulated, which on a T4 takes slow convolution paths.)"""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run repeats its numbers on the same machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds legacy np.random users, e.g. in exercises)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def versions() -> dict[str, str]:
    """Versions of the pieces that decide a chapter's numbers."""
    import matplotlib
    import sklearn

    from genbook import __version__

    out = {
        "python": platform.python_version(),
        "genbook": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "matplotlib": matplotlib.__version__,
    }
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere): float results of
    training differ between CPUs with different vector units, so a run report names it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_kernels() -> str:
    """The vector kernels torch's CPU operators use (``AVX512``, ``AVX2``, ``DEFAULT``...), and the environment
    variables that chose them, if any: ``ATEN_CPU_CAPABILITY=default`` is how ``make robustness`` stands in for
    another machine."""
    capability = torch.backends.cpu.get_cpu_capability()
    chosen = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ]
    return capability + (f" ({', '.join(chosen)})" if chosen else "")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time used so far, in seconds: by this process (``os.times``), and by the whole machine, busy and stolen by
    the hypervisor (``/proc/stat``; None where there is none). Two snapshots say what else ran meanwhile."""

    wall: float
    own: float
    busy: float | None = None
    steal: float | None = None
    total: float | None = None


def cpu_snapshot() -> CpuSnapshot:
    t = os.times()
    snap = CpuSnapshot(wall=time.perf_counter(), own=t.user + t.system)
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return snap
    if len(fields) < 8:
        return snap
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return CpuSnapshot(snap.wall, snap.own, (user + nice + system + irq + softirq) / tick, steal / tick, sum(fields) / tick)


def machine_load(since: CpuSnapshot) -> dict[str, float]:
    """What the CPU did since ``since``: cores used by this process and by every other process on average, and the
    share of the machine's CPU time the hypervisor took (steal). ``/proc/stat`` covers the whole (virtual) machine:
    in a container, "other processes" counts other tenants too, and this process's children and interrupt time are
    counted there as well. A slow run with other processes near a core or with steal above a few percent was
    measured on a busy machine, and its wall time says little about the chapter."""
    now = cpu_snapshot()
    wall = max(now.wall - since.wall, 1e-9)
    own = now.own - since.own
    out = {"this process (cores)": round(own / wall, 2)}
    if None not in (now.busy, since.busy, now.steal, since.steal, now.total, since.total):
        out["other processes (cores)"] = round(max(now.busy - since.busy - own, 0.0) / wall, 2)  # type: ignore[operator]
        total = now.total - since.total  # type: ignore[operator]
        out["cpu steal (%)"] = round(100 * (now.steal - since.steal) / total, 1) if total > 0 else 0.0  # type: ignore[operator]
    return out


def speed_probe(repeats: int = 5) -> float:
    """Milliseconds for a fixed piece of CPU work of the chapters' kind (ten forward and backward passes of a 3x3
    convolution over 32 maps of 16 x 16 and of a (1024 x 64) @ (64 x 256) matmul): the best of ``repeats`` after two
    warm-up rounds, at the current thread count. On the 2-core AMD EPYC host with AVX-512 at two threads it read
    20-23 ms after a chapter and 22-30 ms in a fresh process (2026-12-07); a slower machine reads more, so a chapter's
    wall time can be read beside it (``machine_load`` says whether other work competed). Leaves every random stream
    as it was."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 32, 16, 16, generator=g, requires_grad=True)
    w = torch.randn(32, 32, 3, 3, generator=g, requires_grad=True)
    a = torch.randn(1024, 64, generator=g, requires_grad=True)
    b = torch.randn(64, 256, generator=g, requires_grad=True)
    times = []
    with torch.enable_grad():
        for _ in range(repeats + 2):
            start = time.perf_counter()
            for _ in range(10):
                (F.conv2d(x, w, padding=1).relu().mean() + F.gelu(a @ b).mean()).backward()
            times.append(time.perf_counter() - start)
    return round(1000 * min(times[2:]), 1)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


@dataclass
class Runtime:
    """What :func:`setup` chose. ``pick`` reads a size from the active profile."""

    profile: str
    device: torch.device
    seed: int
    amp_dtype: torch.dtype | None
    started: float = field(default_factory=time.perf_counter)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    findings: list[tuple[str, str]] = field(default_factory=list)
    smoke: bool = False
    ledger: Any = None  # genbook.work.Ledger in smoke mode: what the run counted
    cpu_start: CpuSnapshot = field(default_factory=cpu_snapshot)  # what else the machine did during the run
    probe_ms: float | None = None  # speed_probe() just before the run started (None in smoke mode)

    @property
    def fast(self) -> bool:
        return self.profile == "fast"

    def pick(self, *, fast: T, full: T) -> T:
        """A size for the active profile: ``rt.pick(fast=32, full=64)``. Smoke mode keeps it; a training length is
        ``rt.steps`` and a sample count ``rt.samples``."""
        return fast if self.profile == "fast" else full

    def steps(self, *, fast: T, full: T) -> T:
        """A training length for the active profile (an int, or a dict of them): ``rt.steps(fast=600, full=8000)``.

        In smoke mode it is a :class:`Length` of at most :data:`SMOKE_STEPS` that remembers the planned ``full``
        length: the chapter's own logic (an evaluation at the last step, two halves) sees the short run, and the
        training loops record the planned length, which ``tools/bench.py --smoke`` projects the full run's cost
        from. Every training loop of the package, and :meth:`loop`, also cuts a plain int it is given."""
        value = self.pick(fast=fast, full=full)
        if not self.smoke:
            return value
        if isinstance(value, dict):
            return {k: Length(min(v, SMOKE_STEPS), v) for k, v in value.items()}  # type: ignore[return-value]
        return Length(min(value, SMOKE_STEPS), value)  # type: ignore[arg-type, return-value]

    def samples(self, *, fast: T, full: T) -> T:
        """A number of samples to draw or score (an int, or a dict of them): ``rt.samples(fast=300, full=5000)``;
        at most :data:`SMOKE_SAMPLES` in smoke mode."""
        value = self.pick(fast=fast, full=full)
        if not self.smoke:
            return value
        if isinstance(value, dict):
            return {k: self._cap_samples(v) for k, v in value.items()}  # type: ignore[return-value]
        return self._cap_samples(value)  # type: ignore[arg-type, return-value]

    def _cap_samples(self, n: int) -> int:
        ran = min(int(n), SMOKE_SAMPLES)
        if self.ledger is not None:
            self.ledger.samples.append((int(n), ran))
        return ran

    def loop(self, steps: int, desc: str | None = None, start: int = 0) -> Iterator[int]:
        """The steps of a training loop written in a chapter: ``for step in rt.loop(STEPS, desc="gated PixelCNN")``
        yields ``start, start + 1, ...`` for ``steps`` steps with a progress bar (when ``desc`` is given); in smoke
        mode at most :data:`SMOKE_STEPS` of them, one of which is measured."""
        from genbook.notebook import progress

        run = training_loop(steps, desc or "loop")
        indices = range(start, start + run.steps)
        try:
            for i, step in enumerate(progress(indices, desc=desc, leave=False) if desc else indices):
                run.begin(i)
                yield step
                run.end(i)
        finally:  # a break or an exception in the loop's body must not leave a step being measured
            run.close()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def generator(self, offset: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch generator seeded from the run's seed, for code that takes ``generator=``."""
        return torch.Generator(device=device).manual_seed(self.seed + offset)


_CURRENT: Runtime | None = None


@dataclass
class TrainingLoop:
    """What a training loop runs: ``steps`` (cut to :data:`SMOKE_STEPS` in smoke mode; None for a loop that runs
    until its seconds are up, which smoke mode also cuts), and ``begin(i)`` / ``end(i)`` around step ``i``, which in
    smoke mode measure one step's work for the cost projection."""

    steps: int | None
    meter: Any = None  # genbook.work.LoopMeter
    smoke: bool = False
    _open: bool = False  # inside a step (smoke mode): its optimizer steps are the loop's own

    def begin(self, i: int) -> None:
        if self.smoke and not self._open:
            _SMOKE_STATE["inside"] += 1
            self._open = True
        if self.meter is not None:
            self.meter.begin(i)

    def end(self, i: int) -> None:
        if self.meter is not None:
            self.meter.end(i)
        self._leave()

    def close(self) -> None:
        """After the loop, also after a break or an exception: stop measuring a step left open."""
        if self.meter is not None:
            self.meter.close()
        self._leave()

    def _leave(self) -> None:
        if self._open:
            _SMOKE_STATE["inside"] -= 1
            self._open = False


def training_loop(steps: int | None, desc: str = "train", amp: bool = False) -> TrainingLoop:
    """Every training loop asks this how many steps to run: ``steps`` itself, or in smoke mode at most
    :data:`SMOKE_STEPS`, recorded (with one measured step, and whether the loop trains under mixed precision on a GPU,
    ``amp``) in the run's ledger."""
    if not smoke_mode():
        return TrainingLoop(steps)
    ran = SMOKE_STEPS if steps is None else min(int(steps), SMOKE_STEPS)
    rt = current()
    if rt is None or rt.ledger is None:
        return TrainingLoop(ran, smoke=True)
    from genbook.work import LoopMeter

    planned = None if steps is None else getattr(steps, "planned", int(steps))
    return TrainingLoop(ran, LoopMeter(rt.ledger, desc, planned, ran, amp), smoke=True)


# Smoke mode's backstop for a training loop it does not cut: optimizer steps taken outside every training loop.
SMOKE_UNCUT_STEPS = 200
_SMOKE_STATE: dict[str, Any] = {"inside": 0, "uncut": 0, "allowed": 0, "hook": None}


class UncutTrainingLoop(RuntimeError):
    """Smoke mode met a training loop it cannot cut (not ``fit``, ``train_gan``, ``rt.loop``...)."""


def _count_uncut_step(optimizer, args, kwargs) -> None:
    if _SMOKE_STATE["inside"] or _SMOKE_STATE["allowed"]:
        return
    _SMOKE_STATE["uncut"] += 1
    if _SMOKE_STATE["uncut"] > SMOKE_UNCUT_STEPS:
        _SMOKE_STATE["uncut"] = 0
        raise UncutTrainingLoop(
            f"smoke mode: {SMOKE_UNCUT_STEPS} optimizer steps were taken outside any training loop it can cut; a loop "
            "written in a chapter runs `for step in rt.loop(STEPS)` with STEPS = rt.steps(fast=..., full=...)"
        )


class uncut:  # noqa: N801 - used as a context manager, like torch.no_grad
    """``with runtime.uncut():`` a training loop that smoke mode must run in full (the metrics' rulers, trained once
    per machine when their shipped weights are missing): its steps do not count towards the backstop."""

    def __enter__(self):
        _SMOKE_STATE["allowed"] += 1

    def __exit__(self, *exc):
        _SMOKE_STATE["allowed"] -= 1


def current() -> Runtime | None:
    """The runtime of the last :func:`setup` call in this process, if any."""
    return _CURRENT


def setup(seed: int = 0, profile: str | None = None, device: str | None = None, quiet: bool = False) -> Runtime:
    """Choose profile, device and precision, seed everything and print what was chosen.

    ``GENBOOK_SEED`` overrides ``seed``; ``GENBOOK_THREADS`` sets torch's intra-op threads.
    """
    global _CURRENT
    env_seed = os.environ.get("GENBOOK_SEED")
    if env_seed is not None:
        try:
            seed = int(env_seed)
        except ValueError as exc:
            raise ConfigError(f"GENBOOK_SEED must be an integer, got {env_seed!r}") from exc
    threads = os.environ.get("GENBOOK_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    prof = resolve_profile(profile)
    dev = resolve_device(device)
    seed_everything(seed)
    smoke = smoke_mode()
    probe = None if smoke else speed_probe()  # before the clock starts; smoke mode counts work, not seconds
    rt = Runtime(profile=prof, device=dev, seed=seed, amp_dtype=amp_dtype(dev), smoke=smoke, probe_ms=probe)
    if _CURRENT is not None and _CURRENT.ledger is not None and _CURRENT.ledger.count_all:
        _CURRENT.ledger.counter.__exit__(None, None, None)  # a second setup in one process starts a new count
    if rt.smoke:
        from genbook.metrics import SCORE_N_FULL
        from genbook.work import Ledger

        rt.ledger = Ledger(count_all=os.environ.get("GENBOOK_SMOKE", "").strip().lower() == "count")
        if _SMOKE_STATE["hook"] is None:  # once per process
            from torch.optim.optimizer import register_optimizer_step_post_hook

            _SMOKE_STATE["hook"] = register_optimizer_step_post_hook(_count_uncut_step)
        _SMOKE_STATE.update(inside=0, uncut=0)
        rt.ledger.samples.append((SCORE_N_FULL, SMOKE_SAMPLES))  # metrics.SCORE_N, which every chapter scores at
        if rt.ledger.count_all:
            rt.ledger.counter.__enter__()  # counts everything torch runs from here on (genbook.work)
    _CURRENT = rt
    if not quiet:
        amp = str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "off"
        vers = ", ".join(f"{k} {v}" for k, v in versions().items())
        smoke = f"  SMOKE MODE (full sizes, training loops cut to {SMOKE_STEPS} steps, samples to {SMOKE_SAMPLES})" if rt.smoke else ""
        print(f"genbook: profile={prof}  device={device_name(dev)}  seed={seed}  amp={amp}{smoke}")
        print(f"         {vers}", file=sys.stdout)
    return rt
