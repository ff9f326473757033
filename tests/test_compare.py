"""genbook.compare: every family on one table (chapter 13)."""

import pytest
import torch

from genbook import compare, metrics


def test_every_family_makes_a_row_with_labelled_likelihoods():
    rows = compare.compare(3, n_test=24, verbose=False)
    assert [r.family for r in rows] == list(compare.FAMILIES)
    kinds = {r.family: r.nll_kind for r in rows}
    assert kinds == {"VAE": "bound", "GAN": "none", "flow": "bound", "autoregressive": "exact", "diffusion": "bound",
                     "flow matching": "bound"}  # fmt: skip
    for r in rows:
        assert r.samples.shape == (24, 1, 8, 8) and r.samples.min() >= 0 and r.samples.max() <= 1
        assert torch.equal(r.samples * 16, (r.samples * 16).round())  # on the data's 17 levels
        assert r.train_steps == 3 and 0 < r.train_seconds < 10 and r.params > 0 and r.sample_seconds > 0
        assert (r.nll is None) == (r.family == "GAN") and (r.bpd is None or r.bpd > 0)
        assert 0 <= r.precision <= 1 and 0 <= r.recall <= 1 and r.fd > 0 and r.score.n == 24 and r.score.reference == "test"
        assert r.copying == r.score.copying and r.score.fd_real == rows[0].score.fd_real  # one yardstick for the table
        assert r.sample(3, torch.Generator().manual_seed(0)).shape[0] == 3  # the sampler is kept for experiments
    assert {r.family: r.nfe for r in rows} == {"VAE": 64, "GAN": 1, "flow": 1, "autoregressive": 64, "diffusion": 20, "flow matching": 20}
    table = compare.markdown_table(rows)
    lines = table.splitlines()
    assert len(lines) == 3 + len(rows) and all(line.count("|") == 13 for line in lines)
    assert "| = " in table and "| ≤ " in table and "n/a" in table and lines[-1].startswith("| real digits | 24 training digits")
    other = compare.Row(**{**rows[0].__dict__, "score": metrics.score_digits(rows[0].samples[:20], "test")})
    with pytest.raises(ValueError, match="different sample sizes"):
        compare.markdown_table([rows[0], other])


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="unknown families"):
        compare.compare(3, families=("VAE", "transformer"))
    with pytest.raises(ValueError, match="positive integers"):
        compare.compare(0)
    with pytest.raises(ValueError, match="no step budget for"):
        compare.compare({"VAE": 3}, families=("VAE", "GAN"))
    with pytest.raises(ValueError, match="seconds must be positive"):
        compare.budget(0)
    for n_test in (10_000, 5):
        with pytest.raises(ValueError, match="n_test"):
            compare.compare(3, n_test=n_test)


def test_the_budget_is_steps_fixed_from_the_reference_machine():
    """budget(seconds) gives every family its steps for that many seconds on the reference machine, so a table does
    not depend on the speed or load of the machine that makes it; twice the seconds, twice the steps."""
    b = compare.budget(20)
    assert set(b) == set(compare.FAMILIES) and all(isinstance(v, int) and v > 0 for v in b.values())
    assert b == {f: round(20 * r) for f, r in compare.REFERENCE_STEPS_PER_SECOND.items()}
    assert all(abs(compare.budget(40)[f] - 2 * b[f]) <= 1 for f in b)
