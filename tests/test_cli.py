"""python -m genbook: the training CLI on one process and on two (torchrun, gloo), its checkpoints, and the bench."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genbook import cli, compare, recipes
from genbook.runtime import ConfigError
from genbook.train import CheckpointMismatch, fit, load_checkpoint, weights_hash

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENBOOK_")}
    env.update({"OMP_NUM_THREADS": "1", **extra})
    return env


TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2"]
TRAIN_ARGS = ["--device", "cpu", "--steps", "6", "--batch-size", "16", "--checkpoint-every", "4", "--sample-every", "3", "--quiet"]


@pytest.mark.integration
@pytest.mark.parametrize("family", ["gan", "diffusion", "flow"])
def test_torchrun_two_processes_end_with_the_same_weights(tmp_path, family):
    # gan: two optimizers, DDP with unused parameters in the D step, R1's double backward, BatchNorm buffers;
    # diffusion: the weight average; flow: ActNorm's data-dependent initialization, made on each process's own shard.
    # Each process trains on its own half of the digits with its own noise, so the replicas stay equal only if DDP
    # copied the initial state and averaged the gradients.
    cmd = [*TORCHRUN, "-m", "genbook", "train", family, "--out", str(tmp_path), *TRAIN_ARGS]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / f"{family}-digits.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo" and summary["steps"] == 6
    a, b = summary["weights_hash_by_process"]
    assert a == b, "the two processes ended with different weights"
    net, cfg, extra = recipes.load(tmp_path / f"{family}-digits.pt")
    assert cfg == recipes.ModelConfig(family) and extra["train_steps"] == 6 and extra["world_size"] == 2
    assert recipes.recipe(family).sample(net, cfg, 4, torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)
    assert len(summary["samples"]) == 2 and all(Path(p).exists() for p in summary["samples"])  # steps 3 and 6


@pytest.mark.integration
def test_torchrun_without_gradient_averaging_is_caught(tmp_path):
    # The same launch with DistributedDataParallel replaced by the bare module: the replicas drift apart, and the
    # command must say so and fail rather than save one process's weights as if they were everyone's.
    script = tmp_path / "no_ddp.py"
    script.write_text(
        "import sys\nfrom torch import nn\nnn.parallel.DistributedDataParallel = lambda module, **kw: module\n"
        "from genbook import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    )
    cmd = [*TORCHRUN, str(script), "train", "diffusion", "--out", str(tmp_path / "out"), *TRAIN_ARGS]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert done.returncode != 0 and "ended with different weights" in done.stdout + done.stderr


def test_train_resume_sample_and_early_stopping(tmp_path, capsys):
    args = ["train", "pixelcnn", "--steps", "4", "--out", str(tmp_path), "--checkpoint-every", "2", "--quiet"]
    assert cli.main(args) == 0
    first = json.loads((tmp_path / "pixelcnn-digits.json").read_text())
    assert first["steps"] == 4 and [s for s, _ in first["val_loss"]] == [2, 4]
    # the PixelCNN keeps its best validation weights, as chapter 5 does
    net = recipes.recipe("pixelcnn").build(recipes.ModelConfig("pixelcnn"))["net"]
    extra = load_checkpoint(tmp_path / "pixelcnn-digits.pt", net, recipes.ModelConfig("pixelcnn"))
    assert extra["val_loss"] == pytest.approx(min(v for _, v in first["val_loss"]))
    assert cli.main([*args[:3], "7", *args[4:], "--resume"]) == 0
    again = json.loads((tmp_path / "pixelcnn-digits.json").read_text())
    assert again["steps"] == 7 and [s for s, _ in again["val_loss"]] == [2, 4, 6, 7]
    assert cli.main(["sample", str(tmp_path / "pixelcnn-digits.pt"), "--n", "9", "--png", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert "9 samples of pixelcnn-digits (7 training steps)" in capsys.readouterr().out


def test_a_chapter_loads_what_the_cli_trained(tmp_path, monkeypatch, capsys):
    assert cli.main(["train", "vae", "--steps", "3", "--out", str(tmp_path), "--quiet"]) == 0
    monkeypatch.setenv("GENBOOK_CHECKPOINTS", str(tmp_path))
    (row,) = compare.compare(3, families=("VAE",), n_test=24)
    assert row.source == "loaded" and row.train_steps == 3
    assert "loaded from" in capsys.readouterr().out
    stamp = (tmp_path / "vae-digits.pt").read_bytes()
    (fresh,) = compare.compare(3, families=("VAE",), n_test=24, checkpoints=False)  # retrain, save nothing
    assert fresh.source == "trained" and (tmp_path / "vae-digits.pt").read_bytes() == stamp
    # a checkpoint of another size is refused by name, and nothing is overwritten
    assert cli.main(["train", "flow", "--steps", "2", "--out", str(tmp_path), "--quiet"]) == 0
    (tmp_path / "flow-digits.pt").rename(tmp_path / "GAN-renamed.pt")
    stamp = (tmp_path / "GAN-renamed.pt").read_bytes()
    (tmp_path / "gan-digits.pt").write_bytes(stamp)
    with pytest.raises(CheckpointMismatch, match="family"):
        compare.compare(3, families=("GAN",), n_test=24)
    assert (tmp_path / "gan-digits.pt").read_bytes() == stamp


def test_help_documents_every_flag(capsys):
    for command in ("train", "sample"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        sub = next(a for a in cli._parser()._actions if a.dest == "command").choices[command]
        for action in sub._actions:
            assert action.help, f"{command} {action.option_strings or action.dest} has no help"
            for flag in action.option_strings:
                assert flag in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "vae", "--size", "16"], "digits are 8x8"),
        (["train", "gan", "--dataset", "mnist", "--size", "12"], "size 12 is not supported"),
        (["train", "diffusion", "--width", "2"], "width must be between"),
        (["train", "flow", "--steps", "0"], "--steps must be at least 1"),
        (["train", "flow", "--batch-size", "4000"], "larger than a process's shard"),
        (["train", "vae", "--resume"], "no .* to go on from"),
        (["train", "gan", "--compile"], "cannot differentiate twice"),
        (["train", "gan", "--dataset", "mnist"], "GENBOOK_OFFLINE"),
        (["sample", "nowhere/vae-digits.pt"], "no checkpoint at"),
    ],
)
def test_bad_input_says_what_to_do(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("GENBOOK_OFFLINE", "1")
    monkeypatch.setenv("GENBOOK_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, *(["--out", str(tmp_path / "out"), "--quiet"] if argv[0] == "train" else [])]) == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.pt"))


def test_unknown_family_and_config():
    with pytest.raises(SystemExit):
        cli.main(["train", "transformer"])
    with pytest.raises(ConfigError, match="valid families"):
        recipes.ModelConfig("transformer")


def test_recipe_checkpoints_refuse_other_configs(tmp_path):
    assert cli.main(["train", "diffusion", "--steps", "2", "--out", str(tmp_path), "--quiet", "--width", "16"]) == 0
    path = tmp_path / "diffusion-digits-s8-w16.pt"
    net, cfg, _ = recipes.load(path)
    assert cfg.width == 16
    with pytest.raises(CheckpointMismatch, match="width"):
        load_checkpoint(path, recipes.recipe("diffusion").build(recipes.ModelConfig("diffusion"))["net"], recipes.ModelConfig("diffusion"))


def test_fit_channels_last():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    x = torch.randn(16, 3, 8, 8)

    def batches():
        while True:
            yield x

    seen = []

    def loss(m, b):
        seen.append(b.is_contiguous(memory_format=torch.channels_last))
        return (m(b) - b).pow(2).mean()

    h = fit(net, loss, batches(), steps=20, lr=1e-2, channels_last=True, progress=False)
    assert all(seen) and net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert h.loss[-1] < h.loss[0]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile on a CPU needs a C compiler")
def test_fit_compile_trains_the_same_model(tmp_path, monkeypatch):
    # a cache of its own: inductor's default one (/tmp/torchinductor_$USER) does not key its C++ on
    # ATEN_CPU_CAPABILITY, so code generated under the native kernels fails to build under "default" (torch 2.13)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(64, 4)
    before = weights_hash(net.state_dict())

    def batches():
        while True:
            yield x

    called_with = set()

    def loss(m, b):
        called_with.add(type(m).__name__)
        return m(b).pow(2).mean()

    h = fit(net, loss, batches(), steps=5, compile=True, progress=False)
    assert called_with == {"OptimizedModule"}  # the loss saw the compiled module ...
    assert weights_hash(net.state_dict()) != before and h.loss[-1] < h.loss[0]  # ... and the original one was trained


@pytest.mark.integration
def test_bench_runs_a_chapter_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = ["bash", str(ROOT / "bench" / "gpu.sh"), "--chapters", "01", "--profile", "fast", "--out", str(out)]
    env = _env(PYTHON=sys.executable, GENBOOK_DEVICE="cpu")  # on a GPU machine too: the fast profile on the CPU
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    (row,) = result["chapters"]
    assert result["profile"] == "fast" and row["chapter"] == "01_introduction" and row["ok"]
    assert row["checks_total"] >= 10 and row["checks_passed"] == row["checks_total"]
    assert 0 < row["chapter_seconds"] <= row["wall_seconds"] and row["peak_gpu_mb"] is None
    assert all(isinstance(v, str) for v in row["metrics"].values()) and len(row["metrics"]) == row["checks_total"]
    assert "| 01_introduction | yes |" in done.stdout


@pytest.mark.parametrize("damage", ["random bytes", "text", "truncated", "empty", "other torch file", "odd config", "another family"])
def test_a_damaged_or_foreign_checkpoint_gets_one_clear_line(tmp_path, capsys, damage):
    assert cli.main(["train", "vae", "--steps", "2", "--out", str(tmp_path), "--quiet", "--sample-every", "0"]) == 0
    good = tmp_path / "vae-digits.pt"
    bad = tmp_path / "bad.pt"
    if damage == "random bytes":
        bad.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    elif damage == "text":
        bad.write_text("these are my notes, not a checkpoint\n")
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "other torch file":
        torch.save({"weights": torch.zeros(3)}, bad)
    elif damage == "odd config":  # the right keys, but a config that is not a dict
        torch.save({"state_dict": {}, "config": 3}, bad)
    else:  # a VAE's checkpoint handed to a diffusion model
        bad = good
    if damage == "another family":
        cfg = recipes.ModelConfig("diffusion")
        with pytest.raises(CheckpointMismatch, match="different config"):
            load_checkpoint(bad, recipes.recipe("diffusion").build(cfg)["net"], cfg)
        return
    assert cli.main(["sample", str(bad), "--png", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    assert str(bad) in err and "train again" in err
    assert "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "s.png").exists()
    with pytest.raises(CheckpointMismatch) as info:  # the package's own loader says the same
        load_checkpoint(bad, recipes.recipe("vae").build(recipes.ModelConfig("vae"))["net"], recipes.ModelConfig("vae"))
    assert "weights_only" not in str(info.value)
    assert good.exists()  # nothing else was touched
