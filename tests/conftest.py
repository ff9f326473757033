"""Shared fixtures: a headless matplotlib, a clean GENBOOK_* environment, the harness classifier once per session."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from genbook import metrics, runtime  # noqa: E402

# The tests' tensors are tiny: one intra-op thread is as fast as two, and it does not slow down
# a hundredfold when another process (a notebook run, a second pytest) is busy on the same cores.
torch.set_num_threads(1)

# Settings a developer may have exported; each test starts without them. GENBOOK_CACHE is kept on
# purpose so the harness classifier is trained at most once per machine, not once per test run.
GENBOOK_VARS = (
    "GENBOOK_PROFILE",
    "GENBOOK_DEVICE",
    "GENBOOK_SEED",
    "GENBOOK_THREADS",
    "GENBOOK_OFFLINE",
    "GENBOOK_STATIC",
    "GENBOOK_DATA",
    "GENBOOK_STRICT",
    "GENBOOK_SMOKE",
)


@pytest.fixture(autouse=True)
def clean_genbook_state(monkeypatch):
    """Unset GENBOOK_* settings, forget the current Runtime, and close figures afterwards."""
    for var in GENBOOK_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(runtime, "_CURRENT", None)
    yield
    rt = runtime.current()
    if rt is not None and rt.ledger is not None and rt.ledger.count_all:  # stop counting, or every later test is counted
        rt.ledger.counter.__exit__(None, None, None)
        rt.ledger = None
    plt.close("all")


@pytest.fixture(scope="session")
def harness_classifier():
    """The digits harness classifier, loaded from (or trained into) the normal cache once per session."""
    return metrics.digits_classifier()


@pytest.fixture
def fresh_cache(tmp_path_factory, monkeypatch):
    """An empty GENBOOK_CACHE and no classifier in memory, for tests of the caching itself."""
    path = tmp_path_factory.mktemp("genbook_cache")
    monkeypatch.setenv("GENBOOK_CACHE", str(path))
    monkeypatch.setattr(metrics, "_CLASSIFIER", None)
    monkeypatch.setattr(metrics, "SHIPPED_DIR", path / "no shipped weights")  # test the cache, not the package's weights
    return path
