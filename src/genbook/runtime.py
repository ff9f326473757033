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
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("fast", "full", "auto")
DEVICES = ("auto", "cpu", "cuda", "mps")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting (profile, device, dataset name...) that is not one of the valid choices."""


def resolve_profile(name: str | None = None) -> str:
    """Return ``fast`` or ``full`` from ``name`` or ``GENBOOK_PROFILE`` (``auto`` picks by CUDA)."""
    raw = name if name is not None else os.environ.get("GENBOOK_PROFILE", "auto")
    value = raw.strip().lower()
    if value not in PROFILES:
        raise ConfigError(
            f"unknown profile {raw!r}; valid profiles are {', '.join(PROFILES)} "
            "(set GENBOOK_PROFILE to one of them, or leave it unset for 'auto')"
        )
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

    @property
    def fast(self) -> bool:
        return self.profile == "fast"

    def pick(self, *, fast: T, full: T) -> T:
        """The value for the active profile: ``rt.pick(fast=300, full=5000)``."""
        return fast if self.profile == "fast" else full

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def generator(self, offset: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch generator seeded from the run's seed, for code that takes ``generator=``."""
        return torch.Generator(device=device).manual_seed(self.seed + offset)


_CURRENT: Runtime | None = None


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
    rt = Runtime(profile=prof, device=dev, seed=seed, amp_dtype=amp_dtype(dev))
    _CURRENT = rt
    if not quiet:
        amp = str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "off"
        vers = ", ".join(f"{k} {v}" for k, v in versions().items())
        print(f"genbook: profile={prof}  device={device_name(dev)}  seed={seed}  amp={amp}")
        print(f"         {vers}", file=sys.stdout)
    return rt
