"""Counting the work a chapter does, and projecting what the ``full`` profile would cost on a GPU.

No chapter has run in ``full`` on a GPU yet. Smoke mode (``GENBOOK_SMOKE=1``, see :mod:`genbook.runtime`) runs the
``full`` profile's exact code paths and sizes on the CPU with every training loop cut to a few steps, and meanwhile
this module counts what each loop's step does:

- FLOPs, by the formulas of :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention,
  forward and backward; elementwise work is not counted, and at these sizes it is launch-bound, not FLOP-bound);
- operator launches: every ATen operator that reaches the dispatcher and is not a view (a view launches no kernel),
  which is what eager PyTorch launches one or more GPU kernels for;
- host syncs: ``.item()``, ``float(tensor)``, ``if tensor:`` (``aten._local_scalar_dense``), where the CPU waits for
  the GPU to finish;
- memory: the trainable parameters a step touches (kept four times over with Adam: weights, gradients and two
  moments) and the activations it saves for the backward pass.

:func:`project` turns counted work into seconds on a GPU as the larger of compute and launch time,

    seconds = max(flops / (efficiency * peak), launches * latency + syncs * sync_latency),

with every assumption in :data:`GPUS` and :data:`ASSUMPTIONS`, so a reader can redo the arithmetic; ``bench/``
holds the chapters' projections (``tools/bench.py --smoke``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


@dataclass(frozen=True)
class GPU:
    """A GPU's datasheet peaks (dense, no sparsity) and what one launch costs."""

    name: str
    fp32_tflops: float  # plain fp32 (no TF32): what a chapter without AMP gets
    half_tflops: float  # fp16/bf16 tensor cores: what AMP gets (the T4 has no bf16; the book uses fp16 there)
    memory_gb: float
    source: str


GPUS = {
    "T4": GPU("T4", 8.1, 65.0, 16.0, "NVIDIA T4 datasheet: 8.1 TFLOPS fp32, 65 TFLOPS fp16 tensor (mixed precision), 16 GB"),
    "A100": GPU("A100", 19.5, 312.0, 40.0, "NVIDIA A100 datasheet: 19.5 TFLOPS fp32, 312 TFLOPS bf16/fp16 tensor (dense), 40/80 GB"),
    "H200": GPU("H200", 67.0, 989.0, 141.0, "NVIDIA H200 SXM datasheet: 67 TFLOPS fp32, 989 TFLOPS bf16/fp16 tensor (dense), 141 GB"),
}

# The model's other constants. Each one is an assumption, to be recalibrated once a GPU run is measured (issue 26).
ASSUMPTIONS = {
    "efficiency": (
        0.25,
        "share of the peak that small convolutions and matmuls reach; large GEMMs reach 0.6-0.8, the book's 8x8 to 32x32 layers much less",
    ),
    "latency_s": (
        10e-6,
        "seconds per operator launch in eager PyTorch on a GPU: the CPU-side dispatch (1.3 us for a tiny op, "
        "measured on a 2-core AMD EPYC host of CI's kind; Python and the module calls around it add more) plus CUDA's launch overhead "
        "(about 5 us); assumed the same on every GPU, since the host sets it",
    ),
    "sync_latency_s": (
        50e-6,
        "extra seconds per host sync (.item()): the queue drains and the next launch starts from empty",
    ),
    "adam_copies": (4, "weights, gradients and Adam's two moments, per trainable parameter"),
}


def assumption(name: str) -> float:
    return ASSUMPTIONS[name][0]


def assumptions_table() -> str:
    """Every constant of the projection with its source, as a Markdown table (``book/how_to_run.md`` shows it)."""
    rows = ["| assumption | value | source |", "|---|---|---|"]
    for g in GPUS.values():
        peaks = f"{g.fp32_tflops:g} TFLOPS fp32, {g.half_tflops:g} TFLOPS fp16/bf16, {g.memory_gb:g} GB"
        rows.append(f"| {g.name} peaks | {peaks} | {g.source} |")
    for name, (value, why) in ASSUMPTIONS.items():
        rows.append(f"| `{name}` | {value:g} | {why} |")
    return "\n".join(rows)


@dataclass
class Work:
    """Counted work: FLOPs, operator launches and host syncs."""

    flops: float = 0.0
    launches: float = 0.0  # fractional: an optimizer's multi-tensor kernels are shared by its parameters
    syncs: int = 0

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.launches + other.launches, self.syncs + other.syncs)

    def __sub__(self, other: Work) -> Work:
        return Work(self.flops - other.flops, self.launches - other.launches, self.syncs - other.syncs)

    def __mul__(self, k: float) -> Work:
        return Work(self.flops * k, self.launches * k, round(self.syncs * k))


def project(work: Work, gpu: GPU | str, amp: bool = True) -> float:
    """Seconds ``work`` takes on ``gpu``: the larger of its compute time at :data:`ASSUMPTIONS` ``efficiency`` of the
    peak (the tensor-core peak under ``amp``, as the ``full`` profile trains) and its launch and sync time."""
    gpu = GPUS[gpu] if isinstance(gpu, str) else gpu
    peak = (gpu.half_tflops if amp else gpu.fp32_tflops) * 1e12
    compute = work.flops / (assumption("efficiency") * peak)
    launch = work.launches * assumption("latency_s") + work.syncs * assumption("sync_latency_s")
    return max(compute, launch)


# ----------------------------------------------------------------------------- counting

_FREE = {"aten::detach", "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::_to_copy_noop"}
_SYNC = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::item"}


class _Launches(TorchDispatchMode):
    """Counts the operators that reach the dispatcher: launches (not views, not allocations), host syncs and FLOPs
    (``FlopCounterMode``'s formulas); and the trainable parameters they read.

    ``FlopCounterMode`` itself is not used: its module tracker hooks the backward pass, and with it active
    ``torch.autograd.grad`` on a leaf (a GAN's R1 penalty, a gradient penalty) raises "A leaf node was passed to
    _will_engine_execute_node" (torch 2.13). Its formulas are the same, and the tests compare the two counts."""

    def __init__(self) -> None:
        super().__init__()
        self.formulas = {**flop_registry, **_cpu_attention_flops()}
        self.flops = 0.0
        self.launches = 0.0
        self.syncs = 0
        self.params: dict[int, int] | None = None  # id -> bytes, while a step is being measured
        self.optimizer_tensors = 0  # inside an optimizer's step: how many parameters it updates

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if self.optimizer_tensors:
            # On the CPU an optimizer updates one parameter at a time (an .item() on each step count); on a GPU it
            # updates them all with one multi-tensor kernel per operation, and its step counts stay on the CPU.
            if not func.is_view and name not in _FREE and name not in _SYNC:
                self.launches += 1 / self.optimizer_tensors
        elif name in _SYNC:
            self.syncs += 1
        elif not func.is_view and name not in _FREE:
            self.launches += 1
        if self.params is not None:
            for a in args:
                if isinstance(a, nn.Parameter) and a.requires_grad:
                    self.params[id(a)] = a.numel() * a.element_size()
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def _cpu_attention_flops() -> dict:
    """FLOP formulas for the CPU's fused attention, which ``FlopCounterMode`` knows only under its GPU names."""
    aten = torch.ops.aten
    extra = {}
    cpu_fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_fwd is not None:
        extra[cpu_fwd] = flop_registry[aten._scaled_dot_product_flash_attention]
    cpu_bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if cpu_bwd is not None:  # (grad_out, query, key, value, out, logsumexp, ...), as the GPU's flash backward
        extra[cpu_bwd] = flop_registry[aten._scaled_dot_product_flash_attention_backward]
    return extra


class Counter:
    """Counts FLOPs, launches and syncs of everything torch runs while it is active (``with Counter() as c``), and
    measures single steps inside that: ``c.total()`` now, ``with c.step() as s`` for one step's :class:`StepWork`."""

    def __init__(self) -> None:
        self._launches = _Launches()
        self._depth = 0  # counting while > 0; a step inside a counted block does not count twice

    def __enter__(self) -> Counter:
        self._depth += 1
        if self._depth == 1:
            self._launches.__enter__()
            self._hooks = (
                register_optimizer_step_pre_hook(self._optimizer_starts),
                register_optimizer_step_post_hook(self._optimizer_ends),
            )
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for hook in self._hooks:
                hook.remove()
            self._launches.__exit__(*exc)

    def _optimizer_starts(self, optimizer, args, kwargs) -> None:
        n = sum(p.grad is not None for group in optimizer.param_groups for p in group["params"])
        self._launches.optimizer_tensors = max(n, 1)

    def _optimizer_ends(self, optimizer, args, kwargs) -> None:
        self._launches.optimizer_tensors = 0

    def total(self) -> Work:
        return Work(self._launches.flops, self._launches.launches, self._launches.syncs)

    @contextmanager
    def step(self) -> Iterator[StepWork]:
        """Measure the work inside the block, the parameters it trains and the activations it saves for backward."""
        out = StepWork()
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor):
            if not isinstance(t, nn.Parameter):
                try:
                    saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                except (RuntimeError, NotImplementedError):  # a tensor without storage (e.g. a functional wrapper)
                    pass
            return t

        before = self.total()
        self._launches.params = {}
        try:
            with self, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                yield out
        finally:
            out.work = self.total() - before
            out.param_bytes = sum(self._launches.params.values())
            out.saved_bytes = sum(saved.values())
            self._launches.params = None


@dataclass
class StepWork:
    """One measured step: its work, the bytes of the trainable parameters it read, the bytes it saved for backward."""

    work: Work = field(default_factory=Work)
    param_bytes: int = 0
    saved_bytes: int = 0

    def memory_bytes(self) -> int:
        """Peak memory of training like this: every trainable parameter :data:`ASSUMPTIONS` ``adam_copies`` times, plus
        the saved activations (counted at the CPU's fp32, an upper bound under AMP)."""
        return int(assumption("adam_copies")) * self.param_bytes + self.saved_bytes


# ----------------------------------------------------------------------------- the ledger of a smoke run


@dataclass
class LoopRecord:
    """A training loop of the chapter: the steps the profile asks for (``planned``), the steps smoke mode ran, and the
    work of one of them."""

    desc: str
    planned: int | None
    ran: int
    amp: bool = False  # trains under mixed precision on a GPU (fit's default); a loop written in a chapter does not
    step: StepWork | None = None

    def as_dict(self) -> dict:
        out = {"desc": self.desc, "planned": self.planned, "ran": self.ran, "amp": self.amp}
        if self.step is not None:
            out |= {**dataclasses.asdict(self.step.work), "param_bytes": self.step.param_bytes, "saved_bytes": self.step.saved_bytes}
        return out


@dataclass
class Ledger:
    """Everything a smoke run counted: the total, each training loop and the sample counts it capped."""

    counter: Counter = field(default_factory=Counter)
    loops: list[LoopRecord] = field(default_factory=list)
    samples: list[tuple[int, int]] = field(default_factory=list)  # (planned, ran)
    count_all: bool = False  # count everything, not only one step per training loop (about 3x slower: every op in Python)

    def as_dict(self) -> dict:
        out = {"loops": [r.as_dict() for r in self.loops], "samples": self.samples}
        if self.count_all:
            out["total"] = dataclasses.asdict(self.counter.total())
        return out


class LoopMeter:
    """What a training loop calls in smoke mode: ``begin(i)`` before step ``i`` and ``end(i)`` after it. It measures
    the second step (the first pays for lazy initialization), or the only one."""

    def __init__(self, ledger: Ledger, desc: str, planned: int | None, ran: int, amp: bool = False):
        self.record = LoopRecord(desc, planned, ran, amp)
        ledger.loops.append(self.record)
        self.counter = ledger.counter
        self.at = 1 if ran > 1 else 0
        self._ctx = None

    def begin(self, i: int) -> None:
        if i == self.at and self._ctx is None:
            self._ctx = self.counter.step()
            self.record.step = self._ctx.__enter__()

    def end(self, i: int) -> None:
        if i == self.at and self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    def close(self) -> None:
        """The loop ended (or broke off) with its measured step still open: close it, keeping what it counted."""
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


def project_chapter(ledger: dict, gpu: GPU | str) -> dict:
    """A smoke run's ledger (:meth:`Ledger.as_dict`) projected onto ``gpu`` at the ``full`` profile's lengths.

    Each training loop costs its planned steps times its measured step, at the tensor-core peak if it trains under
    mixed precision on a GPU (``fit``) and at the fp32 peak if not (the GAN loops, loops written in a chapter). A loop
    that ran no measured step is named in ``unmeasured loops``. The rest of the chapter (sampling,
    evaluation, everything outside the loops' steps), when the run counted everything (``GENBOOK_SMOKE=count``), is
    what it counted outside them, its FLOPs times the largest ratio of planned to run sample counts (an upper bound:
    not every sampler runs on the capped counts) and its launches as they were (a sampler runs a count as one batch);
    otherwise it is left out (``other seconds`` None). Memory is the largest training step's
    (:meth:`StepWork.memory_bytes`)."""
    loops_seconds, inside = 0.0, Work()
    peak, unmeasured = 0, []
    for r in ledger["loops"]:
        if "flops" not in r:
            if r["ran"]:
                unmeasured.append(r["desc"])
            continue
        step = Work(r["flops"], r["launches"], r["syncs"])
        planned = r["planned"] if r["planned"] is not None else r["ran"]
        loops_seconds += planned * project(step, gpu, r.get("amp", False))
        inside = inside + step * r["ran"]
        peak = max(peak, StepWork(param_bytes=r["param_bytes"], saved_bytes=r["saved_bytes"]).memory_bytes())
    ratio = max([p / r for p, r in ledger["samples"] if r] or [1.0])
    rest_seconds = None
    if "total" in ledger:
        rest = Work(**ledger["total"]) - inside
        rest = Work(max(rest.flops, 0.0) * ratio, max(rest.launches, 0.0), max(rest.syncs, 0))
        rest_seconds = project(rest, gpu, amp=True)  # sampling runs under autocast in the full profile's samplers
    return {"seconds": loops_seconds + (rest_seconds or 0.0), "training seconds": loops_seconds, "other seconds": rest_seconds,
            "sample ratio": ratio, "peak memory GB": peak / 1e9, "unmeasured loops": unmeasured}  # fmt: skip
