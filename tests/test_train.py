"""Tests for genbook.train: fit's budgets and errors, EMA, History, and checkpoints."""

import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from torch import nn

from genbook.data import Batches
from genbook.nets import MLP
from genbook.train import (
    EMA,
    CheckpointMismatch,
    History,
    config_hash,
    fit,
    fit_or_load,
    load_checkpoint,
    save_checkpoint,
    weights_hash,
)


def mse(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


@pytest.fixture
def regression():
    """y = X w + b + noise with 256 rows, and its least-squares optimum from numpy."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3 + 0.1 * torch.randn(256, 1, generator=g)
    design = np.hstack([x.numpy(), np.ones((256, 1))]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, y.numpy().astype(np.float64), rcond=None)
    best_mse = float(np.mean((design @ coef - y.numpy()) ** 2))
    return x, y, coef[:, 0], best_mse


def test_fit_reaches_least_squares_optimum(regression):
    """fit on linear regression reaches the closed-form least-squares weights and MSE within 300 steps."""
    x, y, coef, best_mse = regression
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    hist = fit(model, mse, Batches(x, y, batch_size=64), steps=300, lr=0.05, progress=False)
    with torch.no_grad():
        final = mse(model, (x, y)).item()
    assert final < best_mse + 1e-3
    np.testing.assert_allclose(np.r_[model.weight.detach().numpy()[0], model.bias.item()], coef, atol=0.02)
    assert np.mean(hist.loss[:10]) > 10 * np.mean(hist.loss[-10:])
    assert not model.training  # fit leaves the model in eval mode


def test_fit_respects_step_budget_and_continues_history(regression):
    """steps=7 takes exactly 7 steps; passing the History back continues its counts."""
    x, y, *_ = regression
    model = nn.Linear(3, 1)
    batches = Batches(x, y, batch_size=32)
    hist = fit(model, mse, batches, steps=7, progress=False)
    assert hist.steps == 7 and len(hist.loss) == 7
    fit(model, mse, batches, steps=5, progress=False, history=hist)
    assert hist.steps == 12 and len(hist.loss) == 12


def test_fit_stops_at_seconds_budget(regression):
    """A seconds budget stops training soon after it is spent, whatever the step count."""
    x, y, *_ = regression

    def slow_loss(model, batch):
        time.sleep(0.02)
        return mse(model, batch)

    hist = fit(nn.Linear(3, 1), slow_loss, Batches(x, y, batch_size=32), seconds=0.15, progress=False)
    assert 1 <= hist.steps <= 10
    assert 0.15 <= hist.seconds < 1.0


def test_fit_logs_extra_values(regression):
    """A loss_fn returning (loss, {name: value}) has its values logged once per step."""
    x, y, *_ = regression
    hist = fit(nn.Linear(3, 1), lambda m, b: (mse(m, b), {"half": 0.5}), Batches(x, y, batch_size=32), steps=4, progress=False)
    assert hist.logs["half"] == [0.5] * 4
    assert len(hist.logs["grad_norm"]) == 4  # clip is on by default, so the norm is logged


def test_fit_raises_on_nan_loss(regression):
    """A non-finite loss raises FloatingPointError instead of training on."""
    x, y, *_ = regression
    with pytest.raises(FloatingPointError, match="nan"):
        fit(nn.Linear(3, 1), lambda m, b: mse(m, b) * float("nan"), Batches(x, y, batch_size=32), steps=3, progress=False)


def test_fit_needs_a_budget(regression):
    """fit without steps or seconds raises ValueError."""
    x, y, *_ = regression
    with pytest.raises(ValueError, match="budget"):
        fit(nn.Linear(3, 1), mse, Batches(x, y, batch_size=32))


def test_fit_clips_gradient_norm():
    """With clip=1 and plain SGD (lr 1) one step moves the weights by a vector of norm exactly 1."""
    model = nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = lambda m, _: 100 * m.weight.sum()  # gradient 100 per weight, norm 200
    no_data = iter(lambda: None, 1)  # an endless iterator of None batches
    fit(model, loss, no_data, steps=1, optimizer=opt, clip=1.0, progress=False)
    step = model.weight.detach() - before
    torch.testing.assert_close(step, torch.full((1, 4), -0.5))


def test_ema_update_is_convex_combination():
    """After one update each EMA weight equals d * old + (1 - d) * new, and buffers are copied as they are."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    old = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    for p_ema, p_old, p_new in zip(ema.model.parameters(), old, model.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p_new)
    assert torch.equal(ema.model[1].running_mean, torch.full((2,), 3.0))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_warmup_uses_the_smaller_early_decay():
    """With warmup the first updates follow (1 + n) / (10 + n): 0.1 at n = 0, then 2/11, ...; the set decay caps it."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5, warmup=True)
    for n, target in enumerate([1.0, 2.0, 3.0]):
        with torch.no_grad():
            model.weight.fill_(target)
        before = ema.model.weight.item()
        ema.update(model)
        d = min(0.5, (1 + n) / (10 + n))
        assert ema.model.weight.item() == pytest.approx(d * before + (1 - d) * target)
    plain = EMA(model, decay=0.5)
    plain.update(model)
    assert plain.model.weight.item() == pytest.approx(3.0)  # no warmup, and the copy already equals the model


def test_ema_rejects_bad_decay():
    """An EMA decay outside [0, 1) raises ValueError."""
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), decay=1.0)


def test_history_smoothed_is_running_mean():
    """History.smoothed(w) is the mean of the last (up to) w losses at each step."""
    losses = [4.0, 2.0, 6.0, 0.0, 8.0]
    expected = [np.mean(losses[max(0, i - 1) : i + 1]) for i in range(len(losses))]
    np.testing.assert_allclose(History(loss=losses).smoothed(window=2), expected)


# ----------------------------------------------------------------------------- checkpoints


@dataclass
class TinyConfig:
    width: int = 8
    hidden: tuple[int, ...] = (16,)
    name: str = "tiny"


def _make(cfg: TinyConfig) -> MLP:
    return MLP(2, cfg.width, hidden=cfg.hidden)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    """Saving and loading into a fresh model reproduces its outputs exactly and returns the extras."""
    cfg = TinyConfig()
    torch.manual_seed(0)
    model = _make(cfg)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, cfg, step=12, note="ok")
    torch.manual_seed(1)
    other = _make(cfg)
    x = torch.randn(5, 2)
    assert not torch.equal(other(x), model(x))
    extra = load_checkpoint(path, other, cfg)
    assert torch.equal(other(x), model(x))
    assert extra == {"step": 12, "note": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_checkpoint_loads_with_weights_only(tmp_path):
    """The checkpoint file is plain data: torch.load(weights_only=True) reads weights, config and hash."""
    cfg = TinyConfig()
    path = save_checkpoint(tmp_path / "ckpt.pt", _make(cfg), cfg)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"state_dict", "config", "config_hash", "weights_hash", "extra"}
    assert payload["weights_hash"] == weights_hash(payload["state_dict"])
    assert payload["config"] == {"width": 8, "hidden": [16], "name": "tiny"}
    assert payload["config_hash"] == config_hash(cfg)


def test_checkpoint_with_other_config_names_the_field(tmp_path):
    """Loading under a config that differs in one field raises CheckpointMismatch naming that field only."""
    cfg = TinyConfig()
    path = save_checkpoint(tmp_path / "ckpt.pt", _make(cfg), cfg)
    other = replace(cfg, hidden=(32,))
    with pytest.raises(CheckpointMismatch, match="hidden") as info:
        load_checkpoint(path, _make(other), other)
    assert "width" not in str(info.value)


def test_checkpoint_with_other_weights_raises_mismatch(tmp_path):
    """Same config but a model whose weights do not fit raises CheckpointMismatch (a ValueError)."""
    cfg = TinyConfig()
    path = save_checkpoint(tmp_path / "ckpt.pt", _make(cfg), cfg)
    with pytest.raises(CheckpointMismatch, match="weights") as info:
        load_checkpoint(path, MLP(3, 8, hidden=(16,)), cfg)
    assert isinstance(info.value, ValueError)


def test_damaged_checkpoint_is_refused(tmp_path):
    """A checkpoint whose weights no longer match the hash saved with them is refused, naming the damage."""
    cfg = TinyConfig()
    path = save_checkpoint(tmp_path / "ckpt.pt", _make(cfg), cfg)
    payload = torch.load(path, weights_only=True)
    next(iter(payload["state_dict"].values())).add_(1.0)  # a changed weight under the old hash
    torch.save(payload, path)
    with pytest.raises(CheckpointMismatch, match="damaged"):
        load_checkpoint(path, _make(cfg), cfg)


def test_fit_or_load_trains_once_then_loads_and_refuses_another_config(tmp_path, monkeypatch):
    """Without a folder it only trains; with GENBOOK_CHECKPOINTS it trains and saves, then loads the same weights
    instead of training; a different config is refused with the differing field named, and nothing is overwritten."""
    cfg, calls = TinyConfig(), []

    def train_into(model):
        def train():
            calls.append(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_()
            return 0.25

        return train

    monkeypatch.delenv("GENBOOK_CHECKPOINTS", raising=False)
    plain = _make(cfg)
    assert fit_or_load("tiny", plain, cfg, train_into(plain))["source"] == "trained" and not list(tmp_path.iterdir())
    monkeypatch.setenv("GENBOOK_CHECKPOINTS", str(tmp_path))
    first = _make(cfg)
    info = fit_or_load("tiny", first, cfg, train_into(first))
    assert info["source"] == "trained" and info["path"] == tmp_path / "tiny.pt" and info["result"] == 0.25
    second = _make(cfg)
    info = fit_or_load("tiny", second, cfg, train_into(second))
    assert info["source"] == "loaded" and len(calls) == 2 and info["result"] == 0.25 and "train_seconds" in info
    x = torch.randn(4, 2)
    assert torch.equal(first(x), second(x))
    before = (tmp_path / "tiny.pt").read_bytes()
    other = replace(cfg, width=9)
    with pytest.raises(CheckpointMismatch, match="width"):
        fit_or_load("tiny", _make(other), other, train_into(_make(other)))
    assert len(calls) == 2 and (tmp_path / "tiny.pt").read_bytes() == before


def test_load_missing_checkpoint_raises_file_not_found(tmp_path):
    """Loading a path with no file raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing.pt", _make(TinyConfig()), TinyConfig())


def test_config_hash_is_canonical_and_sensitive():
    """config_hash is the first 16 hex digits of sha256 of the sorted JSON; equal configs agree, any change differs."""
    canonical = hashlib.sha256(b'{"a": 1, "b": [1, 2]}').hexdigest()[:16]
    assert config_hash({"b": (1, 2), "a": 1}) == canonical
    assert config_hash(TinyConfig()) == config_hash({"name": "tiny", "hidden": [16], "width": 8})
    hashes = {config_hash(TinyConfig()), config_hash(TinyConfig(width=9)), config_hash(TinyConfig(name="Tiny"))}
    assert len(hashes) == 3
    with pytest.raises(TypeError):
        config_hash(["not", "a", "config"])


# ----------------------------------------------------------------------------- gradient skipping


def _steep_linear():
    """A 4-weight linear map and a loss whose gradient is 100 per weight (norm 200), with an endless iterator of None batches."""
    model = nn.Linear(4, 1, bias=False)
    return model, (lambda m, _: 100 * m.weight.sum()), iter(lambda: None, 1)


@pytest.mark.parametrize("clip", [1.0, None])
def test_skip_grad_norm_tiny_threshold_skips_every_update(clip):
    """With skip_grad_norm far below the gradient norm no update happens: weights unchanged, History.skipped == steps."""
    model, loss, no_data = _steep_linear()
    before = model.weight.detach().clone()
    hist = fit(model, loss, no_data, steps=5, clip=clip, skip_grad_norm=1e-6, progress=False)
    assert torch.equal(model.weight.detach(), before)
    assert hist.skipped == 5 and hist.steps == 5 and len(hist.loss) == 5


def test_skip_grad_norm_huge_threshold_skips_nothing():
    """With a huge skip_grad_norm every update is taken: History.skipped == 0 and the weights move."""
    model, loss, no_data = _steep_linear()
    before = model.weight.detach().clone()
    hist = fit(model, loss, no_data, steps=5, skip_grad_norm=1e9, progress=False)
    assert hist.skipped == 0
    assert not torch.equal(model.weight.detach(), before)


@pytest.mark.parametrize(
    ("clip", "threshold", "skipped"), [(1.0, 150.0, True), (1.0, 250.0, False), (None, 150.0, True), (None, 250.0, False)]
)
def test_skip_grad_norm_uses_the_norm_before_clipping(clip, threshold, skipped):
    """The gradient norm 200 is compared before clipping: threshold 150 skips, 250 steps by SGD(lr 1) (clipped to norm 1 or not)."""
    model, loss, no_data = _steep_linear()
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    hist = fit(model, loss, no_data, steps=1, optimizer=opt, clip=clip, skip_grad_norm=threshold, progress=False)
    assert hist.skipped == int(skipped)
    step = model.weight.detach() - before
    if skipped:
        assert torch.equal(step, torch.zeros(1, 4))
    else:
        torch.testing.assert_close(step, torch.full((1, 4), -0.5 if clip else -100.0))


def test_skip_grad_norm_skips_nan_gradients():
    """A finite loss with a NaN gradient is skipped (the weights stay finite and unchanged) even under a huge threshold."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(-1.0)
    before = model.weight.detach().clone()

    def nan_grad(m, _):  # forward 0, but d sqrt(w) / dw at w < 0 is NaN and 0 * NaN = NaN
        w = m.weight
        return torch.where(w > 0, w.sqrt(), torch.zeros_like(w)).sum()

    hist = fit(model, nan_grad, iter(lambda: None, 1), steps=3, skip_grad_norm=1e9, progress=False)
    assert hist.skipped == 3
    assert torch.equal(model.weight.detach(), before)


# ----------------------------------------------------------------------------- early stopping


class _ScriptedEval:
    """An eval_fn that returns preset values in turn and keeps a copy of the weights and the mode at each call."""

    def __init__(self, values):
        self.values, self.snapshots, self.training = list(values), [], []

    def __call__(self, model):
        self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        self.training.append(model.training)
        return self.values[len(self.snapshots) - 1]


def test_early_stopping_keeps_best_weights(regression):
    """With eval values 5, 3, 1, 2, 4 every 2 steps, fit ends with the weights seen at step 6 and records every evaluation."""
    x, y, *_ = regression
    model = nn.Linear(3, 1)
    evaluate = _ScriptedEval([5.0, 3.0, 1.0, 2.0, 4.0])
    hist = fit(model, mse, Batches(x, y, batch_size=32), steps=10, lr=0.05, eval_fn=evaluate, eval_every=2, progress=False)
    assert hist.evals == [(2, 5.0), (4, 3.0), (6, 1.0), (8, 2.0), (10, 4.0)]  # step 10 is not evaluated twice
    assert hist.best_step == 6
    best = evaluate.snapshots[2]
    assert not torch.equal(best["weight"], evaluate.snapshots[-1]["weight"])  # training did move on after step 6
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k])
    assert evaluate.training == [False] * 5  # evaluated in eval mode
    assert not model.training


def test_early_stopping_evaluates_at_the_end(regression):
    """When steps is not a multiple of eval_every, fit evaluates once more after the last step; the last can be the best."""
    x, y, *_ = regression
    model = nn.Linear(3, 1)
    evaluate = _ScriptedEval([3.0, 2.0, 1.0])
    hist = fit(model, mse, Batches(x, y, batch_size=32), steps=7, eval_fn=evaluate, eval_every=3, progress=False)
    assert [s for s, _ in hist.evals] == [3, 6, 7]
    assert hist.best_step == 7
    for k, v in model.state_dict().items():
        assert torch.equal(v, evaluate.snapshots[-1][k])


def test_early_stopping_counts_steps_across_continued_history(regression):
    """Continuing a History, evaluation steps and best_step count from the steps already taken."""
    x, y, *_ = regression
    model = nn.Linear(3, 1)
    batches = Batches(x, y, batch_size=32)
    hist = fit(model, mse, batches, steps=4, progress=False)
    assert hist.evals == [] and hist.best_step is None
    fit(model, mse, batches, steps=4, eval_fn=_ScriptedEval([2.0, 1.0]), eval_every=2, history=hist, progress=False)
    assert hist.evals == [(6, 2.0), (8, 1.0)]
    assert hist.best_step == 8 and hist.steps == 8


def test_patience_stops_once_the_best_evaluation_is_old(regression):
    """Eval values 3, 2, 1, 2, 3, 4 every 2 steps with patience 4: training ends at step 10, four steps after the best
    (step 6), with the weights of step 6; without patience the same run goes on to its 12 steps."""
    x, y, *_ = regression
    values = [3.0, 2.0, 1.0, 2.0, 3.0, 4.0]
    model = nn.Linear(3, 1)
    evaluate = _ScriptedEval(values)
    hist = fit(model, mse, Batches(x, y, batch_size=32), steps=12, eval_fn=evaluate, eval_every=2, patience=4, progress=False)
    assert hist.steps == 10 and hist.best_step == 6
    assert [s for s, _ in hist.evals] == [2, 4, 6, 8, 10]
    for k, v in model.state_dict().items():
        assert torch.equal(v, evaluate.snapshots[2][k])
    full = fit(nn.Linear(3, 1), mse, Batches(x, y, batch_size=32), steps=12, eval_fn=_ScriptedEval(values), eval_every=2,
               progress=False)  # fmt: skip
    assert full.steps == 12 and full.best_step == 6


def test_patience_counts_steps_across_continued_history(regression):
    """Continuing a History, patience is measured from the best evaluation's step in the whole run."""
    x, y, *_ = regression
    model = nn.Linear(3, 1)
    batches = Batches(x, y, batch_size=32)
    hist = fit(model, mse, batches, steps=4, progress=False)
    fit(model, mse, batches, steps=10, eval_fn=_ScriptedEval([2.0, 1.0, 3.0, 4.0]), eval_every=2, patience=2, history=hist,
        progress=False)  # fmt: skip
    assert hist.evals == [(6, 2.0), (8, 1.0), (10, 3.0)]
    assert hist.best_step == 8 and hist.steps == 10


def test_patience_needs_an_evaluation(regression):
    """patience without eval_fn, or shorter than eval_every, is refused with a message that says what it needs."""
    x, y, *_ = regression
    for kwargs in ({"patience": 10}, {"patience": 1, "eval_fn": lambda m: 0.0, "eval_every": 2}):
        with pytest.raises(ValueError, match="patience=.*needs an eval_fn"):
            fit(nn.Linear(3, 1), mse, Batches(x, y, batch_size=32), steps=4, progress=False, **kwargs)


def test_fit_rejects_a_zero_eval_interval(regression):
    """eval_every must be a positive number of steps when eval_fn is given."""
    x, y, *_ = regression
    with pytest.raises(ValueError, match="eval_every"):
        fit(nn.Linear(3, 1), mse, Batches(x, y, batch_size=32), steps=2, eval_fn=lambda m: 0.0, eval_every=0, progress=False)
