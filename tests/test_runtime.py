"""Tests for genbook.runtime: profiles, devices, seeding, setup() and Runtime."""

import os
import random
import time

import numpy as np
import pytest
import torch

from genbook import runtime
from genbook.runtime import ConfigError, Runtime

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
cpu_only = pytest.mark.skipif(torch.cuda.is_available() or runtime._mps_available(), reason="needs a CPU-only machine")


@pytest.mark.parametrize(("name", "expected"), [("fast", "fast"), ("full", "full"), (" FULL ", "full"), ("Fast", "fast")])
def test_resolve_profile_explicit(name, expected):
    """Explicit profile names resolve to themselves, ignoring case and surrounding spaces."""
    assert runtime.resolve_profile(name) == expected


@no_cuda
def test_resolve_profile_auto_is_fast_without_cuda():
    """'auto' (and no setting at all) means 'fast' on a machine without CUDA."""
    assert runtime.resolve_profile("auto") == "fast"
    assert runtime.resolve_profile() == "fast"


def test_resolve_profile_reads_env(monkeypatch):
    """GENBOOK_PROFILE is used when no name is passed, and an explicit name wins over it."""
    monkeypatch.setenv("GENBOOK_PROFILE", "full")
    assert runtime.resolve_profile() == "full"
    assert runtime.resolve_profile("fast") == "fast"


@pytest.mark.parametrize("source", ["argument", "env"])
def test_unknown_profile_lists_valid_ones(monkeypatch, source):
    """An unknown profile raises ConfigError (a ValueError) naming fast, full and auto."""
    if source == "env":
        monkeypatch.setenv("GENBOOK_PROFILE", "turbo")
        call = runtime.resolve_profile
    else:
        call = lambda: runtime.resolve_profile("turbo")
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "turbo" in message
    for name in ("fast", "full", "auto"):
        assert name in message
    assert isinstance(info.value, ValueError)


def test_resolve_device_cpu(monkeypatch):
    """'cpu' (from the argument or GENBOOK_DEVICE) gives the CPU device."""
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("GENBOOK_DEVICE", "CPU")
    assert runtime.resolve_device() == torch.device("cpu")


@cpu_only
def test_resolve_device_auto_is_cpu_on_cpu_machine():
    """'auto' falls back to the CPU when there is neither CUDA nor MPS."""
    assert runtime.resolve_device("auto") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_resolve_device_cuda_without_cuda(name):
    """Asking for CUDA on a machine without it raises ConfigError that says so."""
    with pytest.raises(ConfigError, match="CUDA"):
        runtime.resolve_device(name)


def test_unknown_device_lists_valid_ones():
    """An unknown device name raises ConfigError listing the valid devices."""
    with pytest.raises(ConfigError, match="cpu, cuda"):
        runtime.resolve_device("tpu")


def test_amp_dtype_bf16_only_where_the_gpu_has_it(monkeypatch):
    """bf16 from compute capability 8 (Ampere) on; fp16 on a T4 (7.5), where bf16 would only be emulated."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert runtime.amp_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert runtime.amp_dtype(torch.device("cuda")) == torch.bfloat16


def test_amp_dtype_off_on_cpu():
    """Mixed precision is off (None) on the CPU."""
    assert runtime.amp_dtype(torch.device("cpu")) is None


def test_setup_prints_profile_device_and_seed(capsys):
    """setup() prints the chosen profile, device and seed, and records itself as current()."""
    rt = runtime.setup(seed=3, profile="fast", device="cpu")
    out = capsys.readouterr().out
    assert "profile=fast" in out
    assert "device=cpu" in out
    assert "seed=3" in out
    assert runtime.current() is rt
    assert (rt.profile, rt.device, rt.seed, rt.amp_dtype) == ("fast", torch.device("cpu"), 3, None)


def test_setup_quiet_prints_nothing(capsys):
    """setup(quiet=True) prints nothing."""
    runtime.setup(seed=0, device="cpu", quiet=True)
    assert capsys.readouterr().out == ""


def test_setup_is_reproducible():
    """Two setup(seed=3) runs make torch, NumPy and random draw identical numbers; another seed does not."""

    def draw(seed):
        runtime.setup(seed=seed, device="cpu", quiet=True)
        return torch.randn(5), np.random.rand(3), random.random()  # noqa: NPY002 (legacy global state is what setup seeds)

    first, second, other = draw(3), draw(3), draw(4)
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    assert not torch.equal(first[0], other[0])


def test_setup_env_seed_overrides(monkeypatch):
    """GENBOOK_SEED overrides the seed argument; a non-integer value raises ConfigError."""
    monkeypatch.setenv("GENBOOK_SEED", "7")
    assert runtime.setup(seed=3, device="cpu", quiet=True).seed == 7
    monkeypatch.setenv("GENBOOK_SEED", "seven")
    with pytest.raises(ConfigError, match="GENBOOK_SEED"):
        runtime.setup(device="cpu", quiet=True)


@pytest.mark.parametrize(("profile", "expected"), [("fast", 300), ("full", 5000)])
def test_pick_reads_the_active_profile(profile, expected):
    """Runtime.pick returns the value for the active profile, and .fast agrees."""
    rt = Runtime(profile=profile, device=torch.device("cpu"), seed=0, amp_dtype=None)
    assert rt.pick(fast=300, full=5000) == expected
    assert rt.fast == (profile == "fast")


def test_runtime_generator_is_seeded_from_run_seed():
    """Runtime.generator(offset) draws what a generator seeded with seed + offset draws."""
    rt = Runtime(profile="fast", device=torch.device("cpu"), seed=10, amp_dtype=None)
    expected = torch.rand(4, generator=torch.Generator().manual_seed(12))
    assert torch.equal(torch.rand(4, generator=rt.generator(2)), expected)


def test_versions_lists_the_pieces_that_decide_numbers():
    """versions() reports python, genbook, torch, numpy, scikit-learn and matplotlib."""
    assert {"python", "genbook", "torch", "numpy", "scikit-learn", "matplotlib"} <= set(runtime.versions())


def test_machine_load_sees_this_process_work():
    """A second of this process computing reads as about one core (or more: torch may use two threads) of its own,
    none stolen or used by others beyond what the machine really did; without /proc/stat only its own share."""
    since = runtime.cpu_snapshot()
    end = time.perf_counter() + 1.0
    x = torch.randn(256, 256)
    while time.perf_counter() < end:
        x = torch.tanh(x @ x)
    load = runtime.machine_load(since)
    assert 0.7 <= load["this process (cores)"] <= os.cpu_count() + 0.1
    if "cpu steal (%)" in load:
        assert 0 <= load["cpu steal (%)"] <= 100 and load["other processes (cores)"] >= 0


def test_machine_load_without_proc_stat(monkeypatch):
    since = runtime.CpuSnapshot(wall=time.perf_counter() - 1.0, own=os.times().user + os.times().system)
    monkeypatch.setattr(runtime, "cpu_snapshot", lambda: runtime.CpuSnapshot(wall=time.perf_counter(), own=since.own + 0.5))
    assert runtime.machine_load(since) == {"this process (cores)": pytest.approx(0.5, abs=0.02)}


def test_speed_probe_leaves_random_streams_alone():
    """The probe runs inside setup(), after seeding: it must not move torch's global random stream."""
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    assert runtime.speed_probe(repeats=1) > 0
    assert torch.equal(torch.rand(3), expected)
