"""genbook.compare: every family on one table (chapter 10)."""

import pytest
import torch

from genbook import compare


def test_every_family_makes_a_row_with_labelled_likelihoods():
    rows = compare.compare(seconds=0.3, n_test=24, verbose=False)
    assert [r.family for r in rows] == list(compare.FAMILIES)
    kinds = {r.family: r.nll_kind for r in rows}
    assert kinds == {"VAE": "bound", "GAN": "none", "flow": "bound", "autoregressive": "exact", "diffusion": "bound",
                     "flow matching": "bound"}  # fmt: skip
    for r in rows:
        assert r.samples.shape == (24, 1, 8, 8) and r.samples.min() >= 0 and r.samples.max() <= 1
        assert torch.equal(r.samples * 16, (r.samples * 16).round())  # on the data's 17 levels
        assert r.train_steps >= 1 and 0.3 <= r.train_seconds < 10 and r.params > 0 and r.sample_seconds > 0
        assert (r.nll is None) == (r.family == "GAN") and (r.bpd is None or r.bpd > 0)
        assert 0 <= r.precision <= 1 and 0 <= r.recall <= 1 and r.fd > 0
        assert r.sample(3, torch.Generator().manual_seed(0)).shape[0] == 3  # the sampler is kept for experiments
    assert {r.family: r.nfe for r in rows} == {"VAE": 64, "GAN": 1, "flow": 1, "autoregressive": 64, "diffusion": 20, "flow matching": 20}
    table = compare.markdown_table(rows, floor=36.4)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) and all(line.count("|") == 12 for line in lines)
    assert "| = " in table and "| ≤ " in table and "n/a" in table and "(real: 36.4)" in table


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="unknown families"):
        compare.compare(seconds=1, families=("VAE", "transformer"))
    with pytest.raises(ValueError, match="seconds"):
        compare.compare(seconds=0)
    with pytest.raises(ValueError, match="n_test"):
        compare.compare(seconds=1, n_test=10_000)
