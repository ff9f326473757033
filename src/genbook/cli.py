"""``python -m genbook``: train the book's models beyond a notebook, on a CPU, a GPU or many GPUs.

    python -m genbook train diffusion --steps 20000 --out runs/
    torchrun --nproc_per_node=8 -m genbook train gan --dataset mnist --size 28 --width 64 --out runs/
    python -m genbook sample runs/diffusion-digits.pt --n 64 --png samples.png

``train`` builds a family's recipe (:mod:`genbook.recipes`, the networks chapter 13 compares) and trains it with
PyTorch's DistributedDataParallel whenever it is launched by ``torchrun`` (NCCL on GPUs, gloo on CPUs): every
process holds a replica, reads its own shard of the data, and DDP averages the gradients, so the replicas stay
identical. Single process otherwise. On CUDA it uses mixed precision (bf16 where the GPU has it, fp16 with a
gradient scaler otherwise), ``channels_last`` weights for the convolutional nets, and ``torch.compile`` when
asked. It writes into ``--out``:

``NAME`` is ``FAMILY-DATASET`` at the book's size and width (``diffusion-digits``), ``FAMILY-DATASET-sSIZE-wWIDTH``
otherwise.

- ``NAME.pt``: the sampling network's weights with its :class:`~genbook.recipes.ModelConfig` and a hash of the
  weights (``genbook.train.save_checkpoint``), every ``--checkpoint-every`` steps and at the end. The VAE, flow and
  PixelCNN keep the weights of their best validation loss, as their chapters do; diffusion and flow matching save
  their weight average (EMA). With ``GENBOOK_CHECKPOINTS=DIR``, chapter 13 loads ``DIR/NAME.pt`` for the book's
  default sizes instead of training.
- ``NAME.state.pt``: everything ``--resume`` needs to go on (all networks, optimizers, the average, the step).
- ``NAME-samples-STEP.png`` every ``--sample-every`` steps, and ``NAME.json``: what was run and measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from genbook import data, recipes
from genbook.notebook import peak_memory_mb, progress
from genbook.runtime import ConfigError, amp_dtype, resolve_device
from genbook.train import EMA, CheckpointMismatch, has_convolutions, read_checkpoint, save_checkpoint, weights_hash


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="python -m genbook", description=__doc__.split("\n\n")[0], formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("train", formatter_class=fmt, help="train a family's model (under torchrun: on every process)",
                       description="Train one family's recipe (genbook.recipes). Under `torchrun --nproc_per_node=N` it "
                       "runs on N processes with DistributedDataParallel; --batch-size is per process.")  # fmt: skip
    t.add_argument("family", choices=list(recipes.RECIPES), help="which family's model to train")
    t.add_argument("--dataset", default="digits", choices=recipes.GRAY_SETS, help="the images (online sets download once)")
    t.add_argument("--size", type=int, default=None, help=f"image side, one of {recipes.SIZES} (default: 8 digits, 28 otherwise)")
    t.add_argument("--width", type=int, default=32, help="channels of the networks (32 is the book's)")
    t.add_argument("--steps", type=int, default=2000, help="optimizer steps (the GAN: generator steps, each after one D step)")
    t.add_argument("--seconds", type=float, default=None, help="also stop after this many seconds of training")
    t.add_argument("--batch-size", type=int, default=None, help="images per process and step (default: the recipe's)")
    t.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default: the recipe's)")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights; process r draws its noise from seed + 1 + r")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun, each process takes cuda:LOCAL_RANK)")
    t.add_argument("--out", default="runs", help="folder for checkpoints, samples and the run's JSON")
    t.add_argument("--sample-every", type=int, default=500, help="save a grid of 64 samples every N steps (0: only at the end)")
    t.add_argument("--checkpoint-every", type=int, default=1000, help="validate and save a checkpoint every N steps (and at the end)")
    t.add_argument("--resume", action="store_true", help="go on from NAME.state.pt in --out up to --steps (same config)")
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA (bf16, else fp16)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="channels_last conv weights on CUDA")
    t.add_argument("--compile", action="store_true", help="torch.compile the training step (slow to start; pays off on long runs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("sample", formatter_class=fmt, help="draw samples from a checkpoint into a PNG grid",
                       description="Rebuild a recipe checkpoint's network from its saved config and save a grid of samples.")  # fmt: skip
    s.add_argument("checkpoint", help="a NAME.pt written by `train`")
    s.add_argument("--n", type=int, default=64, help="how many samples")
    s.add_argument("--png", default=None, help="where to save the grid (default: next to the checkpoint)")
    s.add_argument("--seed", type=int, default=0, help="seed of the samples")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p


# ----------------------------------------------------------------------------- distributed setup


class _Dist:
    """Rank, world size and device, from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) when it is set."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_arg)
        if device.type == "cuda" and self.world > 1:
            if self.local >= torch.cuda.device_count():
                raise ConfigError(
                    f"process {self.rank} would take cuda:{self.local}, but this machine has {torch.cuda.device_count()} GPU(s); "
                    "start at most one process per GPU (torchrun --nproc_per_node), or pass --device cpu"
                )
            device = torch.device("cuda", self.local)
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
            if device.type == "cpu":  # share the cores instead of every process taking all of them
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (so that all stop at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _save_grid(images: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from genbook.plotting import mosaic

    grid = mosaic(images.float().cpu())
    plt.imsave(path, grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)


# ----------------------------------------------------------------------------- train


def _load_data(cfg: recipes.ModelConfig, d: _Dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation images. The digits have a validation split; the online sets keep their last 5000
    training images for validation (their test split is left alone)."""
    if not d.main:
        d.barrier()  # the main process downloads an online set once; the others then read its cache
    train = recipes.load_levels(cfg.dataset, "train", cfg.size)
    if cfg.dataset == "digits":
        val = recipes.load_levels(cfg.dataset, "val", cfg.size)
    else:
        train, val = train[:-5000], train[-5000:]
    if d.main:
        d.barrier()
    return train, val[:2000]


@torch.no_grad()
def _val_loss(objective: recipes.Objective, val: torch.Tensor, batch: int = 256) -> float:
    objective.eval()
    total = sum(float(objective(chunk)[0]) * len(chunk) for chunk in val.split(batch))
    objective.train()
    return total / len(val)


def train(args: argparse.Namespace) -> dict:
    """Run ``python -m genbook train`` with parsed ``args``; returns the run's summary (also written as JSON)."""
    r = recipes.recipe(args.family)
    size = args.size if args.size is not None else (8 if args.dataset == "digits" else 28)
    cfg = recipes.ModelConfig(r.key, args.dataset, size, args.width)
    for flag in ("steps", "checkpoint_every"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.sample_every < 0:
        raise ConfigError(f"--sample-every must be 0 or more, got {args.sample_every}")
    out = Path(args.out)
    ckpt, state_path, summary_path = out / f"{cfg.name}.pt", out / f"{cfg.name}.state.pt", out / f"{cfg.name}.json"
    if args.resume and not state_path.exists():
        raise FileNotFoundError(f"--resume: no {state_path} to go on from; run without --resume to start")
    d = _Dist(args.device)
    try:
        return _train(args, r, cfg, d, out, ckpt, state_path, summary_path)
    finally:
        d.close()


class _Run:
    """One ``train`` run, as named steps: set up (:meth:`__init__`, and :meth:`restore` for ``--resume``), then
    :meth:`step` until the budget is spent, with :meth:`read_losses`, :meth:`save_samples` and :meth:`checkpoint`
    on their schedules, then :meth:`finish`. The state lives on the object so that each step reads as what it does."""

    def __init__(self, args, r: recipes.Recipe, cfg: recipes.ModelConfig, d: _Dist, out: Path, ckpt: Path, state_path: Path):
        self.args, self.r, self.cfg, self.d = args, r, cfg, d
        self.out, self.ckpt, self.state_path = out, ckpt, state_path
        self.device, self.cuda = d.device, d.device.type == "cuda"
        train_x, val_x = _load_data(cfg, d)
        self.shard = train_x[d.rank :: d.world].to(self.device)  # process r trains on images r, r + W, r + 2W, ...
        self.val_x = val_x.to(self.device)
        smallest = len(train_x) // d.world  # the same on every process, so all of them accept or refuse together
        self.batch_size = args.batch_size or min(r.batch_size, smallest)
        if self.batch_size > smallest:
            raise ConfigError(f"--batch-size {self.batch_size} is larger than a process's shard of the data ({smallest} images)")
        if args.compile and not r.compiles:
            raise ConfigError(f"--compile does not work for {r.key}: torch.compile cannot differentiate twice (its R1 penalty)")
        self.lr = args.lr or r.lr
        self._build()
        self.step, self.seconds_before, self.history, self.val_history, self.best = 0, 0.0, [], [], None
        self.scaler_states: dict = {}
        self.samples: list[str] = []
        self.pending: list[torch.Tensor] = []  # losses still on the device: read every 25 steps, not every step

    def _build(self) -> None:
        """The networks (the same initial weights on every process), the objective, the optimizers, the average."""
        args, r = self.args, self.r
        torch.manual_seed(args.seed)  # DDP also copies rank 0's weights at the start
        self.nets = {k: v.to(self.device) for k, v in r.build(self.cfg).items()}
        self.channels_last = self.cuda and args.channels_last
        if self.channels_last:
            for net in self.nets.values():
                if has_convolutions(net):
                    net.to(memory_format=torch.channels_last)
        self.objective = r.objective(self.nets)
        if r.init is not None:
            r.init(self.nets, self.shard)
        self.opts = {ph: torch.optim.Adam(self.objective.parameters_of(ph), lr=self.lr, betas=r.betas) for ph in r.phases}
        self.ema = EMA(self.nets["net"], decay=r.ema, warmup=True) if r.ema else None  # warm-up: short runs, as in chapter 13

    def restore(self) -> None:
        """``--resume``: networks, optimizers, average, step, seconds and validation history from the state file."""
        keys = ("config", "objective", "optimizers", "step", "seconds", "val")
        state = read_checkpoint(self.state_path, keys=keys, what="training state", map_location=self.device)
        if state["config"] != self.cfg.__dict__:
            raise CheckpointMismatch(f"--resume: {self.state_path} was trained with {state['config']}, not {self.cfg.__dict__}")
        self.objective.load_state_dict(state["objective"])
        for ph, opt in self.opts.items():
            opt.load_state_dict(state["optimizers"][ph])
        self.scaler_states = state.get("scalers") or {}
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
            self.ema.updates = state["step"]
        self.step, self.seconds_before, self.val_history = state["step"], state["seconds"], [tuple(v) for v in state["val"]]
        if state.get("best") is not None:
            self.best = (state["best"]["loss"], state["best"]["weights"])

    def prepare(self) -> None:
        """Noise streams, DDP, compile, mixed precision, the batches; then the clock starts."""
        args, r, d = self.args, self.r, self.d
        torch.manual_seed(args.seed + 1 + d.rank + 7919 * self.step)  # every process its own noise (new noise on resume)
        self.model = self.objective
        if d.world > 1:
            ids = [self.device.index] if self.cuda else None
            self.model = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids, find_unused_parameters=len(r.phases) > 1)
        if args.compile:
            self.model = torch.compile(self.model)
        dtype = amp_dtype(self.device) if args.amp and r.amp else None
        self.dtype = None if dtype == torch.float16 and not r.fp16 else dtype
        self.scalers = {ph: torch.amp.GradScaler("cuda") for ph in r.phases} if self.dtype == torch.float16 else {}
        for ph, sc in self.scalers.items():
            if ph in self.scaler_states:
                sc.load_state_dict(self.scaler_states[ph])
        self.batches = data.Batches(self.shard, batch_size=self.batch_size, seed=args.seed + d.rank + 7919 * self.step)
        self.clip = 1.0 if r.phases == ("main",) else None  # the chapters clip every family but the GAN
        self.sample_g = torch.Generator().manual_seed(args.seed)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.bar = progress(total=args.steps, initial=self.step, desc=f"{self.cfg.name} x{d.world}", disable=args.quiet or not d.main)
        self.start = time.perf_counter()
        self.objective.train()
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)

    def out_of_time(self) -> bool:
        """Asked every 10 steps: agreeing on it is a collective call, and a GPU sync."""
        seconds = self.args.seconds
        return seconds is not None and self.step % 10 == 0 and self.d.any(time.perf_counter() - self.start >= seconds)

    def train_step(self) -> None:
        """One optimizer step per phase (the GAN: discriminator, then generator), then the weight average."""
        for ph in self.r.phases:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss, _ = self.model(next(self.batches), ph)
            opt, scaler = self.opts[ph], self.scalers.get(ph)
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if self.clip is not None:
                if scaler:
                    scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(self.objective.parameters_of(ph), self.clip)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        if self.ema is not None:
            self.ema.update(self.nets["net"])
        self.step += 1
        self.pending.append(loss.detach())
        self.bar.update(1)

    def read_losses(self) -> None:
        """Move the pending losses to the history; a loss that is not finite stops the run."""
        if not self.pending:
            return
        values = torch.stack(self.pending).float().tolist()
        self.pending.clear()
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"the loss became {bad[0]} before step {self.step} on process {self.d.rank}; lower --lr")
        self.history.extend(values)
        self.bar.set_postfix(loss=f"{sum(self.history[-25:]) / len(self.history[-25:]):.4f}", refresh=False)

    def sampler_net(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.nets["net"]

    def save_samples(self) -> None:
        net = self.sampler_net()
        was = net.training
        net.eval()
        path = self.out / f"{self.cfg.name}-samples-{self.step:07d}.png"
        _save_grid(self.r.sample(net, self.cfg, 64, self.sample_g), path)
        net.train(was)
        self.samples.append(str(path))

    def checkpoint(self) -> None:
        """Validation loss; the sampling network (its best weights under early stopping) and the full training state."""
        r = self.r
        val = _val_loss(self.objective, self.val_x) if r.key != "gan" else None
        if val is not None:
            self.val_history.append((self.step, val))
        keep = self.sampler_net()
        if r.early_stop and val is not None:
            if self.best is None or val < self.best[0]:
                self.best = (val, {k: v.detach().clone() for k, v in self.nets["net"].state_dict().items()})
            keep = copy.deepcopy(self.nets["net"])
            keep.load_state_dict(self.best[1])
        seconds = self.seconds_before + time.perf_counter() - self.start
        extra = {
            "train_steps": self.step,
            "train_seconds": seconds,
            "world_size": self.d.world,
            "batch_size": self.batch_size * self.d.world,
        }
        if val is not None:
            extra["val_loss"] = self.best[0] if r.early_stop else val
        save_checkpoint(self.ckpt, keep, self.cfg, **extra)
        best = self.best
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(
            {"config": self.cfg.__dict__, "objective": self.objective.state_dict(), "step": self.step, "seconds": seconds,
             "val": self.val_history, "optimizers": {ph: o.state_dict() for ph, o in self.opts.items()},
             "scalers": {ph: sc.state_dict() for ph, sc in self.scalers.items()},
             "ema": self.ema.model.state_dict() if self.ema is not None else None,
             "best": {"loss": best[0], "weights": best[1]} if best is not None else None},
            tmp,
        )  # fmt: skip
        tmp.replace(self.state_path)  # a run killed while saving leaves the previous state whole

    def finish(self, summary_path: Path) -> dict:
        """Equal weights on every process (checked by hash), the last samples and checkpoint, and the summary JSON."""
        self.read_losses()
        self.bar.close()
        seconds = time.perf_counter() - self.start
        d, step = self.d, self.step
        if d.world > 1:  # DDP keeps parameters equal; make the buffers (BatchNorm's running statistics) equal too
            for b in self.objective.buffers():
                dist.broadcast(b, 0)
        hashes = [weights_hash(self.objective.state_dict())]
        if d.world > 1:
            hashes = [None] * d.world
            dist.all_gather_object(hashes, weights_hash(self.objective.state_dict()))
            if len(set(hashes)) > 1:
                raise RuntimeError(f"the processes ended with different weights (hashes {hashes}): DistributedDataParallel went wrong")
        summary: dict = {}
        if d.main:
            if not self.samples or not self.samples[-1].endswith(f"{step:07d}.png"):
                self.save_samples()
            if step % self.args.checkpoint_every:
                self.checkpoint()
            summary = self._summary(seconds, hashes)
            summary_path.write_text(json.dumps(summary, indent=2))
            where = f"checkpoint {self.ckpt}; samples {self.samples[-1]}"
            print(f"{self.cfg.name}: {step} steps on {d.world} process(es) in {seconds:.1f} s; {where}")
        d.barrier()
        return summary

    def _summary(self, seconds: float, hashes: list) -> dict:
        args, tail = self.args, self.history[-50:]
        return {
            "config": self.cfg.__dict__,
            "recipe": self.r.title,
            "steps": self.step,
            "seconds": round(self.seconds_before + seconds, 2),
            "steps_per_second": round(len(self.history) / seconds, 2) if seconds > 0 else None,
            "world_size": self.d.world,
            "backend": dist.get_backend() if self.d.world > 1 else None,
            "device": str(self.device),
            "batch_size_per_process": self.batch_size,
            "lr": self.lr,
            "amp": str(self.dtype).replace("torch.", "") if self.dtype else None,
            "channels_last": self.channels_last,
            "compile": bool(args.compile),
            "loss_last_50": sum(tail) / len(tail) if tail else None,
            "val_loss": self.val_history,
            "peak_memory_mb": peak_memory_mb(self.device),
            "checkpoint": str(self.ckpt),
            "samples": self.samples,
            "weights_hash_by_process": hashes,
        }


def _train(args, r: recipes.Recipe, cfg: recipes.ModelConfig, d: _Dist, out: Path, ckpt: Path, state_path: Path, summary_path: Path):
    """The training loop of ``python -m genbook train``, step by named step."""
    run = _Run(args, r, cfg, d, out, ckpt, state_path)
    if args.resume:
        run.restore()
    run.prepare()
    while run.step < args.steps and not run.out_of_time():
        run.train_step()
        if run.step % 25 == 0:
            run.read_losses()
        if d.main and args.sample_every and run.step % args.sample_every == 0:
            run.save_samples()
        if d.main and run.step % args.checkpoint_every == 0:
            run.checkpoint()
    return run.finish(summary_path)


def sample(args: argparse.Namespace) -> Path:
    device = resolve_device(args.device)
    net, cfg, extra = recipes.load(args.checkpoint, device)
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    images = recipes.recipe(cfg.family).sample(net, cfg, args.n, torch.Generator().manual_seed(args.seed))
    path = Path(args.png) if args.png else Path(args.checkpoint).with_suffix(".samples.png")
    _save_grid(images, path)
    steps = int(extra.get("train_steps", 0))
    print(f"{args.n} samples of {cfg.name} ({steps} training steps) -> {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            train(args)
        else:
            sample(args)
    except (ConfigError, CheckpointMismatch, FileNotFoundError, data.DatasetUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "sample", "train"]
