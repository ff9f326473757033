"""One training loop for every family: ``fit(model, loss_fn, batches, ...)``.

Progress bar (tqdm.auto), loss history, a step and/or wall-clock budget, EMA of the weights,
AMP on CUDA (bf16, or fp16 with a gradient scaler), gradient clipping, and checkpoints that
carry their config and refuse to load into a model that does not match.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genbook.notebook import progress as _progress
from genbook.runtime import amp_dtype as _amp_dtype
from genbook.runtime import smoke_mode, training_loop


class EMA:
    """Exponential moving average of a model's weights: theta_ema <- d theta_ema + (1 - d) theta.

    ``ema.model`` is a frozen copy to evaluate and sample with; buffers are copied as they are. With ``warmup``
    the decay of update n (from 0) is min(d, (1 + n) / (10 + n)), so that after a short run the average is not
    still made mostly of the random initial weights (0.995^300 = 22% of them without it); chapter 13's equal
    budgets give the slowest families only a few hundred steps.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        self.updates += 1
        # d * ema + (1 - d) * p, all parameters at once (one kernel per op on a GPU; the same numbers as one by one)
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


@dataclass
class History:
    """What ``fit`` measured: loss per step, extra logged values, steps and seconds taken."""

    loss: list[float] = field(default_factory=list)
    logs: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    skipped: int = 0  # updates dropped by gradient skipping
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, value) from ``eval_fn``
    best_step: int | None = None  # the step whose weights ``fit`` kept, when early stopping

    def smoothed(self, window: int = 50) -> list[float]:
        """Running mean of the loss over ``window`` steps (for plots and for checks on the trend)."""
        out, acc = [], 0.0
        for i, v in enumerate(self.loss):
            acc += v - (self.loss[i - window] if i >= window else 0.0)
            out.append(acc / min(i + 1, window))
        return out


def has_convolutions(model: nn.Module) -> bool:
    """True when ``model`` holds 2-D convolutions, the layers that ``channels_last`` memory order speeds up on a GPU."""
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def _channels_last(batch: Any) -> Any:
    """4-D float tensors (images) in ``batch`` (a tensor or a tuple of them) in channels-last memory order."""
    if isinstance(batch, tuple):
        return tuple(_channels_last(b) for b in batch)
    if isinstance(batch, torch.Tensor) and batch.ndim == 4 and batch.is_floating_point():
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]


class _LossLog:
    """The losses of recent steps, moved into the history every ``every`` steps: on a GPU each read waits for the
    GPU to finish, so it reads every 25 steps there and every step on a CPU. A loss that is not finite stops the run."""

    def __init__(self, hist: History, bar: Any, every: int):
        self.hist, self.bar, self.every = hist, bar, every
        self.pending: list[tuple[torch.Tensor, dict]] = []

    def add(self, loss: torch.Tensor, logs: dict) -> None:
        self.pending.append((loss.detach(), logs))

    def read(self, steps_done: int) -> None:
        """``steps_done``: the step count of the history once the pending steps are in it."""
        if not self.pending:
            return
        losses = torch.stack([loss for loss, _ in self.pending]).float().tolist()
        first = steps_done - len(self.pending)
        for i, (value, (_, logs)) in enumerate(zip(losses, self.pending)):
            if not math.isfinite(value):
                self.bar.close()
                raise FloatingPointError(f"loss became {value} at step {first + i}; lower lr or enable clip")
            self.hist.loss.append(value)
            for k, v in logs.items():
                self.hist.logs.setdefault(k, []).append(float(v))
        self.pending.clear()


class _BestWeights:
    """Early stopping: ``eval_fn(model)`` (lower is better) when asked, and a copy of the weights of the best value."""

    def __init__(self, eval_fn: Callable[[nn.Module], float], hist: History):
        self.eval_fn, self.hist = eval_fn, hist
        self.best: tuple[float, dict[str, torch.Tensor]] | None = None

    def evaluate(self, model: nn.Module, at_step: int) -> None:
        model.eval()
        value = float(self.eval_fn(model))
        model.train()
        self.hist.evals.append((at_step, value))
        if self.best is None or value < self.best[0]:
            self.best = (value, {k: v.detach().clone() for k, v in model.state_dict().items()})
            self.hist.best_step = at_step

    def restore(self, model: nn.Module) -> None:
        model.load_state_dict(self.best[1])


def _update(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    logs: dict,
    scaler: torch.amp.GradScaler | None,
    clip: float | None,
    skip_grad_norm: float | None,
    ema: EMA | None,
    hist: History,
) -> dict:
    """One update from ``loss``: backward, the gradient norm (clipped, and logged), the optimizer step unless gradient
    skipping drops it, and the weight average. Returns ``logs`` with the gradient norm added when it was computed."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    skip = False
    if clip is not None or skip_grad_norm is not None:
        params = list(model.parameters())
        foreach = params[0].device.type in ("cpu", "cuda")  # one kernel per op on a GPU; the same numbers as one by one
        norm = nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"), foreach=foreach)
        skip = skip_grad_norm is not None and not norm <= skip_grad_norm  # a NaN norm is skipped too
        logs = {**logs, "grad_norm": norm.detach()}
    if skip:
        hist.skipped += 1
        if scaler is not None:
            scaler.update()
        return logs
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    if ema is not None:
        ema.update(model)
    return logs


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterator[Any],
    steps: int | None = None,
    seconds: float | None = None,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    ema: EMA | None = None,
    clip: float | None = 1.0,
    skip_grad_norm: float | None = None,
    amp: bool | None = None,
    progress: bool = True,
    desc: str = "train",
    history: History | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,  # noqa: A002 - torch's own name for it
) -> History:
    """Minimize ``loss_fn(model, batch)`` over ``batches`` for ``steps`` steps or ``seconds`` seconds.

    ``loss_fn`` returns a scalar tensor, or ``(loss, {name: value})`` to log extra numbers.
    AMP is on by default when the model sits on a CUDA device. Passing ``history`` continues it.
    ``skip_grad_norm`` drops any update whose gradient norm (before clipping) exceeds it, the
    gradient skipping of very deep VAEs (Child 2021; chapter 2, "Hierarchical VAEs");
    ``History.skipped`` counts the dropped updates. Whenever the gradient norm is computed (``clip``
    or ``skip_grad_norm`` set) it is logged as ``History.logs["grad_norm"]``.
    ``eval_fn(model)`` (e.g. a validation loss, lower is better) runs every ``eval_every`` steps and
    at the end; the model keeps the weights of the best evaluation (early stopping on a held-out
    split, which 1000 training digits need). ``patience`` (steps) also ends training once the best evaluation is
    that many steps old, so that a model is compared at convergence rather than at a step count.

    On a GPU (the ``full`` profile): ``channels_last`` (default: on for a CUDA model with convolutions) stores the
    convolution weights and 4-D float batches channels-last, which tensor cores prefer; ``compile`` (default: the
    ``GENBOOK_COMPILE`` environment variable, ``1`` to turn it on) passes ``torch.compile(model)`` to ``loss_fn``
    (its ``forward`` is compiled; the first steps pay for the compilation).
    """
    if steps is None and seconds is None:
        raise ValueError("fit needs a budget: steps=..., seconds=..., or both")
    if eval_fn is not None and eval_every < 1:
        raise ValueError(f"eval_every must be a positive number of steps, got {eval_every}")
    if patience is not None and (eval_fn is None or patience < eval_every):
        raise ValueError(
            f"patience={patience} needs an eval_fn and at least eval_every={eval_every} steps: it ends training once the "
            "best evaluation is that many steps old"
        )
    # set-up: precision, memory order, compilation, optimizer, history, progress bar
    device = next(model.parameters()).device
    dtype = _amp_dtype(device) if amp is not False else None
    if channels_last is None:
        channels_last = device.type == "cuda" and has_convolutions(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile is None:
        compile = os.environ.get("GENBOOK_COMPILE", "0") not in ("", "0")  # noqa: A001
    trained = torch.compile(model) if compile else model
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    hist = history or History()
    run = training_loop(steps, desc, amp=dtype is not None or amp is not False)  # smoke mode: a few steps, one measured
    steps = run.steps
    bar = _progress(total=steps, desc=desc, disable=not progress, leave=False)
    losses = _LossLog(hist, bar, every=25 if device.type == "cuda" else 1)
    early = _BestWeights(eval_fn, hist) if eval_fn is not None else None
    start = time.perf_counter()
    model.train()
    step = 0
    try:
        while (steps is None or step < steps) and (seconds is None or time.perf_counter() - start < seconds):
            # one step: the loss on the next batch, then the update
            run.begin(step)
            batch = next(batches)
            if channels_last:
                batch = _channels_last(batch)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = loss_fn(trained, batch)
            loss, logs = out if isinstance(out, tuple) else (out, {})
            if losses.every == 1 and not torch.isfinite(loss):
                bar.close()
                raise FloatingPointError(f"loss became {loss.item()} at step {hist.steps + step}; lower lr or enable clip")
            logs = _update(model, opt, loss, logs, scaler, clip, skip_grad_norm, ema, hist)
            losses.add(loss, logs)
            run.end(step)
            step += 1
            # bookkeeping: losses into the history, the progress bar, early stopping's evaluation
            if step % losses.every == 0 or step == steps:
                losses.read(hist.steps + step)
            if step % 25 == 0 or step == steps:
                bar.set_postfix(loss=f"{sum(hist.loss[-25:]) / len(hist.loss[-25:]):.4f}", refresh=False)
            bar.update(1)
            if early is not None and step % eval_every == 0:
                early.evaluate(model, hist.steps + step)
                if patience is not None and hist.steps + step - hist.best_step >= patience:
                    break  # the validation value has not improved for `patience` steps
    finally:
        run.close()
    # finish: the last losses, a last evaluation, the best weights
    losses.read(hist.steps + step)
    bar.close()
    if early is not None:
        if not hist.evals or hist.evals[-1][0] != hist.steps + step:
            early.evaluate(model, hist.steps + step)
        early.restore(model)
    model.eval()
    hist.steps += step
    hist.seconds += time.perf_counter() - start
    return hist


# ----------------------------------------------------------------------------- checkpoints


class CheckpointMismatch(ValueError):
    """A checkpoint whose config or weights do not fit the model it is loaded into."""


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise TypeError("a checkpoint config must be a dataclass or a dict")
    return json.loads(json.dumps(config, default=str))  # plain JSON types only: nothing to unpickle


def config_hash(config: Any) -> str:
    """A short content hash of a config, stable across runs and machines."""
    text = json.dumps(_config_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """A content hash of a model's weights (names, dtypes, shapes and bytes), to tell a damaged or swapped file."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: Any, **extra: float | int | str) -> Path:
    """Write weights, config (as JSON-safe data), the config's hash and the weights' hash; the file appears only
    when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": model.state_dict(),
        "config": _config_dict(config),
        "config_hash": config_hash(config),
        "weights_hash": weights_hash(model.state_dict()),
        "extra": dict(extra),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(
    path: str | os.PathLike, keys: tuple[str, ...] = ("state_dict", "config"), what: str = "genbook checkpoint", map_location: Any = "cpu"
) -> dict:
    """Read a file written by :func:`save_checkpoint` (or the CLI's training state), tensors and plain data only.

    ``torch.load(weights_only=True)`` never runs code, but on a file that is not a checkpoint (random bytes, a text
    file, a truncated download) it raises an unpickling error whose advice is to retry with ``weights_only=False``,
    which would run whatever code the file holds. This turns every such failure into a :class:`CheckpointMismatch`
    that names the file and says what to do, and never passes that advice on. ``keys`` are the entries the payload
    must have; ``map_location`` is ``torch.load``'s.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    todo = "delete it and train again (python -m genbook train FAMILY), or pass the checkpoint you meant"
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # garbage makes torch's unpickler raise almost anything (IndexError, EOFError, ...)
        kind = "is empty" if path.stat().st_size == 0 else "is truncated or damaged, or is not a checkpoint at all"
        # the exception's class, never its text: torch's text recommends weights_only=False
        raise CheckpointMismatch(f"{path} {kind} (torch could not read it as a {what}: {type(exc).__name__}); {todo}") from None
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        found = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointMismatch(f"{path} is a torch file but not a {what} (it holds {found}, not {list(keys)}); {todo}")
    return payload


def load_checkpoint(path: str | os.PathLike, model: nn.Module, config: Any) -> dict[str, Any]:
    """Load weights saved by :func:`save_checkpoint` into ``model`` after checking the config matches.

    Uses ``weights_only=True``: a checkpoint can hold tensors and plain data, never code.
    Raises :class:`CheckpointMismatch` naming the differing fields. Returns the ``extra`` dict.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    want = _config_dict(config)
    have = payload["config"]
    if not isinstance(have, dict):
        raise CheckpointMismatch(f"{path} is not a genbook checkpoint (its config is a {type(have).__name__}); train again")
    if have != want:
        diff = sorted(k for k in set(want) | set(have) if want.get(k, "<missing>") != have.get(k, "<missing>"))
        details = ", ".join(f"{k}: checkpoint {have.get(k, '<missing>')!r} vs model {want.get(k, '<missing>')!r}" for k in diff)
        raise CheckpointMismatch(f"checkpoint {path} was trained with a different config ({details}); retrain or pass its config")
    if "weights_hash" in payload and weights_hash(payload["state_dict"]) != payload["weights_hash"]:
        raise CheckpointMismatch(f"checkpoint {path} is damaged: its weights do not match the hash saved with them; delete it and retrain")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointMismatch(f"checkpoint {path} does not fit this model's weights: {exc}") from exc
    return payload.get("extra", {})


def fit_or_load(name: str, model: nn.Module, config: Any, train: Callable[[], Any], directory: str | os.PathLike | None = None) -> dict:
    """Train ``model`` by calling ``train()``, or load it instead when a checkpoint folder holds one.

    The folder is ``directory`` or, when that is None, the ``GENBOOK_CHECKPOINTS`` environment variable; without
    either this is just ``train()``. With a folder, ``DIR/NAME.pt`` is loaded when it exists (its config must equal
    ``config``: otherwise :class:`CheckpointMismatch` names the fields that differ, and nothing is trained or
    overwritten), and written after training when it does not. Loading never unpickles code (``weights_only``).
    Returns ``{"source": "loaded" | "trained", "path": Path | None, "seconds": float, **extra}``, where ``extra``
    holds what was saved with the checkpoint: the training seconds, and ``train()``'s result if it is a number, or
    its numeric entries if it is a dict.
    """
    folder = directory if directory is not None else os.environ.get("GENBOOK_CHECKPOINTS") or None
    if smoke_mode():  # a 3-step model must never be saved where a real run would load it, nor a real one loaded
        folder = None
    path = Path(folder) / f"{name}.pt" if folder is not None else None
    if path is not None and path.exists():
        start = time.perf_counter()
        extra = load_checkpoint(path, model, config)
        model.eval()
        return {"source": "loaded", "path": path, "seconds": time.perf_counter() - start, **extra}
    start = time.perf_counter()
    result = train()
    seconds = time.perf_counter() - start
    extra: dict[str, float] = {"train_seconds": seconds}
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        extra["result"] = float(result)
    elif isinstance(result, dict):  # numbers to keep with the weights, e.g. {"train_steps": 1200}
        extra.update({k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if path is not None:
        save_checkpoint(path, model, config, **extra)
    return {"source": "trained", "path": path, "seconds": seconds, **extra}
