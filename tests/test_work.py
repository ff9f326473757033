"""Smoke mode (full sizes, short loops) and the work counter behind the GPU cost projection (issue 26)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from genbook import data, metrics, runtime, work
from genbook.notebook import check
from genbook.train import fit


def test_the_projection_of_a_matmul_loop_is_the_formula():
    """A known workload: 10 matmuls of (64 x 128) @ (128 x 32) and one .item(). Counted FLOPs and launches are the
    arithmetic's, and the projection is max(compute, launches)."""
    a, b = torch.randn(64, 128), torch.randn(128, 32)
    with work.Counter() as c:
        with c.step() as s:
            for _ in range(10):
                y = a @ b
            y.sum().item()
    flops = 10 * 2 * 64 * 128 * 32
    assert s.work.flops == flops
    assert s.work.launches == 11  # ten matmuls and the sum; .item() is a sync, not a launch
    assert s.work.syncs == 1
    for gpu in work.GPUS.values():
        compute = flops / (work.assumption("efficiency") * gpu.half_tflops * 1e12)
        launch = 11 * work.assumption("latency_s") + work.assumption("sync_latency_s")
        assert work.project(s.work, gpu) == pytest.approx(max(compute, launch))
    big = work.Work(flops=1e15, launches=1)  # compute-bound: the T4 takes longer than the H200 by their peaks' ratio
    assert work.project(big, "T4") / work.project(big, "H200") == pytest.approx(989 / 65)


def test_views_are_not_launches_and_an_optimizer_counts_as_multi_tensor_kernels():
    x = torch.randn(8, 8)
    with work.Counter() as c:
        before = c.total()
        x.view(64)[::2].unsqueeze(0).t()  # views only: no kernel runs
        assert (c.total() - before).launches == 0
        params = [nn.Parameter(torch.randn(3)) for _ in range(5)]
        opt = torch.optim.Adam(params)
        for p in params:
            p.grad = torch.ones(3)
        before = c.total()
        opt.step()
        five = c.total() - before
    with work.Counter() as c1:
        one = [nn.Parameter(torch.randn(3))]
        one[0].grad = torch.ones(3)
        opt1 = torch.optim.Adam(one)
        before = c1.total()
        opt1.step()
        single = (c1.total() - before).launches
    assert single > 0 and five.launches == pytest.approx(single)  # five parameters cost what one does: a kernel per op
    assert five.syncs == 0  # Adam's step counts live on the CPU on a GPU too


def test_a_step_records_parameters_and_saved_activations():
    lin = nn.Linear(100, 50)
    x = torch.randn(32, 100)
    with work.Counter() as c, c.step() as s:
        torch.relu(lin(x)).sum().backward()
    assert s.param_bytes == (100 * 50 + 50) * 4
    assert s.saved_bytes >= 32 * 100 * 4  # the input saved for the weight's gradient, at least
    assert s.memory_bytes() == 4 * s.param_bytes + s.saved_bytes


def test_smoke_mode_caps_lengths_and_keeps_sizes(monkeypatch):
    """A chapter-sized fixture: the full profile's width, a full-length fit and a chapter loop; 3 steps each run,
    the planned lengths and one measured step each are in the ledger."""
    monkeypatch.setenv("GENBOOK_SMOKE", "1")
    monkeypatch.setenv("GENBOOK_STRICT", "1")
    rt = runtime.setup(quiet=True)
    assert (rt.profile, rt.smoke) == ("full", True)
    width = rt.pick(fast=8, full=64)
    steps = rt.steps(fast=100, full=8000)
    assert (width, steps, steps.planned) == (64, runtime.SMOKE_STEPS, 8000)  # the full size; a short run of a long plan
    half, rest = steps // 2, steps - steps // 2  # arithmetic acts on the plan; what runs follows it
    assert (half, half.planned, rest, rest.planned) == (3, 4000, 3, 4000)
    assert rt.steps(fast={8: 10}, full={8: 600, 32: 2})[32] == 2 and rt.steps(fast=1, full=2).planned == 2
    assert rt.samples(fast=300, full=5000) == runtime.SMOKE_SAMPLES
    assert rt.samples(fast={"a": 10, "b": 5000}, full={"a": 10, "b": 5000}) == {"a": 10, "b": runtime.SMOKE_SAMPLES}
    net = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 16))
    x = torch.randn(256, 16)
    hist = fit(net, lambda m, b: (m(b) - b).pow(2).mean(), data.Batches(x, batch_size=32, seed=0), steps=steps, progress=False)
    assert hist.steps == runtime.SMOKE_STEPS
    ran = list(rt.loop(500, desc=None, start=1))  # a plain int is cut too
    assert ran == [1, 2, 3]
    loops = rt.ledger.as_dict()["loops"]
    assert [(r["desc"], r["planned"], r["ran"]) for r in loops] == [("train", 8000, 3), ("loop", 500, 3)]
    one = loops[0]
    assert one["flops"] == 3 * 2 * 32 * (16 * width + width * 16) - 2 * 32 * 16 * width  # fwd + bwd, no grad for the input
    assert one["param_bytes"] == sum(p.numel() for p in net.parameters()) * 4
    check("a claim that cannot hold after three steps", False, 0.0, "> 1")  # reported, not raised, even if strict
    assert rt.checks[-1][1] is False
    t4 = work.project_chapter(rt.ledger.as_dict(), "T4")
    assert t4["training seconds"] == pytest.approx(8000 * work.project(work.Work(one["flops"], one["launches"], one["syncs"]), "T4"))


def test_smoke_mode_refuses_the_fast_profile(monkeypatch):
    monkeypatch.setenv("GENBOOK_SMOKE", "1")
    monkeypatch.setenv("GENBOOK_PROFILE", "fast")
    with pytest.raises(runtime.ConfigError, match="full profile"):
        runtime.setup(quiet=True)


def test_outside_smoke_mode_nothing_is_cut_or_counted():
    rt = runtime.setup(quiet=True, profile="full")
    assert rt.ledger is None and rt.samples(fast=1, full=5000) == 5000
    assert list(rt.loop(5)) == [0, 1, 2, 3, 4]
    assert runtime.training_loop(7).steps == 7 and runtime.training_loop(None).steps is None


def test_flops_match_flop_counter_mode():
    """The counter uses FlopCounterMode's formulas: on a conv net's forward and backward the two counts agree."""
    from torch.utils.flop_counter import FlopCounterMode

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    x = torch.randn(4, 3, 8, 8)
    with FlopCounterMode(display=False) as ref:
        net(x).sum().backward()
    with work.Counter() as c:
        net(x).sum().backward()
    assert c.total().flops == ref.get_total_flops() > 0


def test_counting_survives_autograd_grad_on_a_leaf():
    """R1 and gradient penalties differentiate with respect to the input, a leaf: counting must not break them."""
    x = torch.randn(8, 2, requires_grad=True)
    lin = nn.Linear(2, 1)
    with work.Counter() as c:
        (g,) = torch.autograd.grad(lin(x).sum(), x, create_graph=True)
        g.pow(2).sum().backward()
    assert c.total().flops > 0 and lin.weight.grad is not None


def test_count_mode_counts_the_rest_of_the_chapter(monkeypatch):
    """GENBOOK_SMOKE=count also counts what runs outside the training loops (sampling, evaluation), which the
    projection scales by the sample counts' ratio; GENBOOK_SMOKE=1 counts one step per loop only."""
    monkeypatch.setenv("GENBOOK_SMOKE", "count")
    rt = runtime.setup(quiet=True)
    a, b = torch.randn(100, 128), torch.randn(128, 128)
    n = rt.samples(fast=30, full=30 * runtime.SMOKE_SAMPLES)  # thirty times what smoke mode runs
    (a[:n] @ b).sum().item()
    ledger = rt.ledger.as_dict()
    assert ledger["total"]["flops"] == 2 * n * 128 * 128
    assert ledger["samples"] == [(metrics.SCORE_N_FULL, n), (30 * n, n)]  # metrics.SCORE_N is capped too
    t4 = work.project_chapter(ledger, "T4")
    assert t4["sample ratio"] == 30  # the largest
    assert t4["other seconds"] == pytest.approx(work.project(work.Work(30 * 2 * n * 128 * 128, 4, 1), "T4"))  # randn x 2, mm, sum


def test_score_n_is_capped_in_smoke_mode():
    """metrics.SCORE_N, the size every chapter scores at, is a sample count too: 20 in smoke mode (read at import)."""
    import subprocess
    import sys

    code = "from genbook import metrics, runtime; print(metrics.SCORE_N, runtime.SMOKE_SAMPLES)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "GENBOOK_SMOKE": "1"})
    assert out.stdout.split() == [str(runtime.SMOKE_SAMPLES)] * 2, out.stderr
    assert metrics.SCORE_N == metrics.SCORE_N_FULL == 300  # this process is not in smoke mode


def test_length_arithmetic_runs_at_least_one_step_and_pickles():
    import copy
    import pickle

    n = runtime.Length(3, 8000)
    assert (n // 4, (n // 4).planned) == (3, 2000)  # a quarter of a long plan still runs SMOKE_STEPS
    assert (n - 100, (n - 100).planned) == (3, 7900) and (n + 500, (n + 500).planned) == (3, 8500)
    assert (runtime.Length(3, 5) // 2, (runtime.Length(3, 5) // 2).planned) == (2, 2)  # a short plan runs in full
    assert (runtime.Length(1, 1) - 1).planned == 0 and runtime.Length(1, 1) - 1 == 0  # nothing planned, nothing run
    assert n * 0.5 == 1.5 and not hasattr(n * 0.5, "planned")  # a float leaves the plan behind (documented)
    for twin in (copy.deepcopy(n), pickle.loads(pickle.dumps(n))):
        assert (twin, twin.planned) == (3, 8000)


def test_a_loop_left_early_stops_measuring(monkeypatch):
    """A break (or an exception) at the measured step closes the measurement: later work is not charged to the loop."""
    monkeypatch.setenv("GENBOOK_SMOKE", "1")
    rt = runtime.setup(quiet=True)
    x = torch.randn(64, 64)
    for step in rt.loop(rt.steps(fast=10, full=100)):
        x @ x
        if step == 1:  # the measured step
            break
    record = rt.ledger.loops[-1]
    assert record.step.work.launches == 1
    x @ x  # after the loop: counted by nobody
    assert record.step.work.launches == 1 and rt.ledger.counter._depth == 0
    with pytest.raises(ValueError):
        for step in rt.loop(50):
            if step == 1:
                raise ValueError("a bug in the loop's body")
    assert rt.ledger.counter._depth == 0 and runtime._SMOKE_STATE["inside"] == 0


def test_loops_are_projected_at_their_own_precision(monkeypatch):
    """fit trains under autocast on a GPU (the tensor-core peak); a loop written in a chapter does not (fp32)."""
    monkeypatch.setenv("GENBOOK_SMOKE", "1")
    rt = runtime.setup(quiet=True)
    a = torch.randn(512, 512)
    for _ in rt.loop(1000):
        a @ a
    net = nn.Linear(512, 512)
    fit(net, lambda m, b: m(b).pow(2).mean(), data.Batches(a, batch_size=512, seed=0), steps=1000, progress=False)
    chapter_loop, fitted = rt.ledger.as_dict()["loops"]
    assert (chapter_loop["amp"], fitted["amp"]) == (False, True)
    h200 = work.GPUS["H200"]
    step = work.Work(chapter_loop["flops"], chapter_loop["launches"], chapter_loop["syncs"])
    assert work.project(step, h200, amp=False) == pytest.approx(2 * 512**3 / (work.assumption("efficiency") * 67e12))


def test_smoke_mode_stops_a_training_loop_it_cannot_cut(monkeypatch):
    """The backstop: optimizer steps outside every loop smoke mode cuts raise after SMOKE_UNCUT_STEPS; inside
    rt.loop, fit or runtime.uncut() (the rulers) they do not count."""
    monkeypatch.setenv("GENBOOK_SMOKE", "1")
    runtime.setup(quiet=True)
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    with runtime.uncut():
        for _ in range(runtime.SMOKE_UNCUT_STEPS + 5):
            opt.step()
    with pytest.raises(runtime.UncutTrainingLoop, match="rt.loop"):
        for _ in range(runtime.SMOKE_UNCUT_STEPS + 1):
            opt.step()


def test_smoke_mode_never_touches_the_checkpoint_folder(monkeypatch, tmp_path):
    from genbook.train import fit_or_load

    monkeypatch.setenv("GENBOOK_SMOKE", "1")
    monkeypatch.setenv("GENBOOK_CHECKPOINTS", str(tmp_path))
    runtime.setup(quiet=True)
    net = nn.Linear(2, 2)
    fit_or_load("tiny", net, {"kind": "linear"}, lambda: None)
    assert not any(tmp_path.iterdir())
