"""``python -m genbook``: train the book's models beyond a notebook, on a CPU, a GPU or many GPUs.

    python -m genbook train diffusion --steps 20000 --out runs/
    torchrun --nproc_per_node=8 -m genbook train gan --dataset mnist --size 28 --width 64 --out runs/
    python -m genbook sample runs/diffusion-digits.pt --n 64 --png samples.png

``train`` builds a family's recipe (:mod:`genbook.recipes`, the networks chapter 10 compares) and trains it with
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
  their weight average (EMA). With ``GENBOOK_CHECKPOINTS=DIR``, chapter 10 loads ``DIR/NAME.pt`` for the book's
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


def _train(args, r: recipes.Recipe, cfg: recipes.ModelConfig, d: _Dist, out: Path, ckpt: Path, state_path: Path, summary_path: Path):
    device, cuda = d.device, d.device.type == "cuda"
    train_x, val_x = _load_data(cfg, d)
    shard = train_x[d.rank :: d.world].to(device)  # process r trains on images r, r + W, r + 2W, ...
    val_x = val_x.to(device)
    smallest = len(train_x) // d.world  # the same on every process, so all of them accept or refuse together
    batch_size = args.batch_size or min(r.batch_size, smallest)
    if batch_size > smallest:
        raise ConfigError(f"--batch-size {batch_size} is larger than a process's shard of the data ({smallest} images)")
    if args.compile and not r.compiles:
        raise ConfigError(f"--compile does not work for {r.key}: torch.compile cannot differentiate twice (its R1 penalty)")
    lr = args.lr or r.lr

    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also copies rank 0's at the start)
    nets = {k: v.to(device) for k, v in r.build(cfg).items()}
    channels_last = cuda and args.channels_last
    if channels_last:
        for net in nets.values():
            if has_convolutions(net):
                net.to(memory_format=torch.channels_last)
    objective = r.objective(nets)
    if r.init is not None:
        r.init(nets, shard)
    opts = {ph: torch.optim.Adam(objective.parameters_of(ph), lr=lr, betas=r.betas) for ph in r.phases}
    ema = EMA(nets["net"], decay=r.ema, warmup=True) if r.ema else None  # warm-up: short runs, as in chapter 10
    step, seconds_before, history, val_history, best = 0, 0.0, [], [], None
    if args.resume:
        keys = ("config", "objective", "optimizers", "step", "seconds", "val")
        state = read_checkpoint(state_path, keys=keys, what="training state", map_location=device)
        if state["config"] != cfg.__dict__:
            raise CheckpointMismatch(f"--resume: {state_path} was trained with {state['config']}, not {cfg.__dict__}")
        objective.load_state_dict(state["objective"])
        for ph, opt in opts.items():
            opt.load_state_dict(state["optimizers"][ph])
        scaler_states = state.get("scalers") or {}
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
            ema.updates = state["step"]
        step, seconds_before, val_history = state["step"], state["seconds"], [tuple(v) for v in state["val"]]
        if state.get("best") is not None:
            best = (state["best"]["loss"], state["best"]["weights"])
    torch.manual_seed(args.seed + 1 + d.rank + 7919 * step)  # every process draws its own noise (and new noise on resume)
    model = objective
    if d.world > 1:
        ids = [device.index] if cuda else None
        model = nn.parallel.DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=len(r.phases) > 1)
    if args.compile:
        model = torch.compile(model)
    dtype = amp_dtype(device) if args.amp and r.amp else None
    if dtype == torch.float16 and not r.fp16:
        dtype = None
    scalers = {ph: torch.amp.GradScaler("cuda") for ph in r.phases} if dtype == torch.float16 else {}
    if args.resume:
        for ph, sc in scalers.items():
            if ph in scaler_states:
                sc.load_state_dict(scaler_states[ph])
    batches = data.Batches(shard, batch_size=batch_size, seed=args.seed + d.rank + 7919 * step)
    clip = 1.0 if r.phases == ("main",) else None  # the chapters clip every family but the GAN
    sample_g = torch.Generator().manual_seed(args.seed)
    samples: list[str] = []
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    bar = progress(total=args.steps, initial=step, desc=f"{cfg.name} x{d.world}", disable=args.quiet or not d.main)
    start = time.perf_counter()
    objective.train()

    def sampler_net() -> nn.Module:
        return ema.model if ema is not None else nets["net"]

    def checkpoint() -> None:
        nonlocal best
        val = _val_loss(objective, val_x) if r.key != "gan" else None
        if val is not None:
            val_history.append((step, val))
        keep = sampler_net()
        if r.early_stop and val is not None:
            if best is None or val < best[0]:
                best = (val, {k: v.detach().clone() for k, v in nets["net"].state_dict().items()})
            keep = copy.deepcopy(nets["net"])
            keep.load_state_dict(best[1])
        seconds = seconds_before + time.perf_counter() - start
        extra = {"train_steps": step, "train_seconds": seconds, "world_size": d.world, "batch_size": batch_size * d.world}
        if val is not None:
            extra["val_loss"] = best[0] if r.early_stop else val
        save_checkpoint(ckpt, keep, cfg, **extra)
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {"config": cfg.__dict__, "objective": objective.state_dict(), "step": step, "seconds": seconds, "val": val_history,
             "optimizers": {ph: o.state_dict() for ph, o in opts.items()},
             "scalers": {ph: sc.state_dict() for ph, sc in scalers.items()},
             "ema": ema.model.state_dict() if ema is not None else None,
             "best": {"loss": best[0], "weights": best[1]} if best is not None else None},
            tmp,
        )  # fmt: skip
        tmp.replace(state_path)  # a run killed while saving leaves the previous state whole

    def save_samples() -> None:
        net = sampler_net()
        was = net.training
        net.eval()
        path = out / f"{cfg.name}-samples-{step:07d}.png"
        _save_grid(r.sample(net, cfg, 64, sample_g), path)
        net.train(was)
        samples.append(str(path))

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    pending: list[torch.Tensor] = []  # losses still on the device: read every 25 steps, not every step (no GPU stall)

    def flush() -> None:
        if pending:
            values = torch.stack(pending).float().tolist()
            pending.clear()
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"the loss became {bad[0]} before step {step} on process {d.rank}; lower --lr")
            history.extend(values)
            bar.set_postfix(loss=f"{sum(history[-25:]) / len(history[-25:]):.4f}", refresh=False)

    def out_of_time() -> bool:  # asked every 10 steps: agreeing on it is a collective call, and a GPU sync
        return args.seconds is not None and step % 10 == 0 and d.any(time.perf_counter() - start >= args.seconds)

    while step < args.steps and not out_of_time():
        for ph in r.phases:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, _ = model(next(batches), ph)
            opt, scaler = opts[ph], scalers.get(ph)
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if clip is not None:
                if scaler:
                    scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(objective.parameters_of(ph), clip)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        if ema is not None:
            ema.update(nets["net"])
        step += 1
        pending.append(loss.detach())
        bar.update(1)
        if step % 25 == 0:
            flush()
        if d.main and args.sample_every and step % args.sample_every == 0:
            save_samples()
        if d.main and step % args.checkpoint_every == 0:
            checkpoint()
    flush()
    bar.close()
    seconds = time.perf_counter() - start
    if d.world > 1:  # DDP keeps parameters equal; make the buffers (BatchNorm's running statistics) equal too
        for b in objective.buffers():
            dist.broadcast(b, 0)
    hashes = [weights_hash(objective.state_dict())]
    if d.world > 1:
        hashes = [None] * d.world
        dist.all_gather_object(hashes, weights_hash(objective.state_dict()))
        if len(set(hashes)) > 1:
            raise RuntimeError(f"the processes ended with different weights (hashes {hashes}): DistributedDataParallel went wrong")
    summary: dict = {}
    if d.main:
        if not samples or not samples[-1].endswith(f"{step:07d}.png"):
            save_samples()
        if step % args.checkpoint_every:
            checkpoint()
        tail = history[-50:]
        summary = {
            "config": cfg.__dict__,
            "recipe": r.title,
            "steps": step,
            "seconds": round(seconds_before + seconds, 2),
            "steps_per_second": round(len(history) / seconds, 2) if seconds > 0 else None,
            "world_size": d.world,
            "backend": dist.get_backend() if d.world > 1 else None,
            "device": str(device),
            "batch_size_per_process": batch_size,
            "lr": lr,
            "amp": str(dtype).replace("torch.", "") if dtype else None,
            "channels_last": channels_last,
            "compile": bool(args.compile),
            "loss_last_50": sum(tail) / len(tail) if tail else None,
            "val_loss": val_history,
            "peak_memory_mb": peak_memory_mb(device),
            "checkpoint": str(ckpt),
            "samples": samples,
            "weights_hash_by_process": hashes,
        }
        summary_path.write_text(json.dumps(summary, indent=2))
        print(f"{cfg.name}: {step} steps on {d.world} process(es) in {seconds:.1f} s; checkpoint {ckpt}; samples {samples[-1]}")
    d.barrier()
    return summary


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
