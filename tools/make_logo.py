"""Draw the book's logo and favicon with the book's own model: digits sampled from chapter 7's flow-matching network.

Usage: python tools/make_logo.py [--seconds 60] [--seed 0]

Trains the ``flow-matching`` recipe (``python -m genbook train flow-matching``) for ``--seconds`` on the CPU, samples
256 digits, keeps for each class 0-9 the sample the harness classifier of chapter 1 is surest of, and writes
``book/_static/logo.png`` (the ten in a row) and ``book/_static/favicon.png`` (the 8).
The ink is a colour ramp and the background transparent, so the images read on the light and the dark theme.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "book" / "_static"


def ink(images: np.ndarray, scale: int, gap: int, cols: int) -> np.ndarray:
    """(N, 8, 8) intensities in [0, 1] -> an RGBA mosaic: alpha is the intensity, colour runs blue -> violet -> orange."""
    n, h, w = images.shape
    rows = -(-n // cols)
    out = np.zeros((rows * (h * scale + gap) - gap, cols * (w * scale + gap) - gap, 4), dtype=np.float32)
    ramp = np.array([[0.16, 0.40, 0.86], [0.55, 0.30, 0.85], [0.95, 0.50, 0.20]])
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        u = i / max(1, n - 1)  # position along the ramp
        k = min(1, int(u * 2))
        colour = ramp[k] + (ramp[k + 1] - ramp[k]) * (u * 2 - k)
        big = np.kron(img, np.ones((scale, scale)))
        y, x = r * (h * scale + gap), c * (w * scale + gap)
        out[y : y + h * scale, x : x + w * scale, :3] = colour
        out[y : y + h * scale, x : x + w * scale, 3] = np.clip((big - 0.1) / 0.9, 0, 1)  # the faintest level is paper
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="training time on this machine")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import matplotlib.pyplot as plt

    from genbook import cli, metrics, recipes

    with tempfile.TemporaryDirectory() as tmp:
        budget = ["--steps", "1000000", "--seconds", str(args.seconds), "--checkpoint-every", "1000000", "--sample-every", "0"]
        code = cli.main(["train", "flow-matching", *budget, "--out", tmp, "--device", "cpu", "--seed", str(args.seed), "--quiet"])
        if code:
            return code
        net, cfg, extra = recipes.load(Path(tmp) / f"{recipes.ModelConfig('flow-matching').name}.pt")
    x = recipes.recipe("flow-matching").sample(net, cfg, 256, torch.Generator().manual_seed(args.seed + 1))
    labels, conf = metrics.classify(x)
    # for each digit 0-9, the sample the harness classifier (chapter 1) is surest of: "0123456789" in the model's hand
    best = [int(torch.where(labels == d, conf, torch.full_like(conf, -1)).argmax()) for d in range(10)]
    digits = x[best, 0].numpy()
    STATIC.mkdir(parents=True, exist_ok=True)
    plt.imsave(STATIC / "logo.png", ink(digits, scale=8, gap=8, cols=10))
    plt.imsave(STATIC / "favicon.png", ink(digits[8:9], scale=4, gap=0, cols=1))
    print(f"logo and favicon from {int(extra['train_steps'])} flow-matching steps ({extra['train_seconds']:.0f} s) -> {STATIC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
