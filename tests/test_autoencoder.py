"""Tests for genbook.autoencoder: shapes, the reconstruction loss, and that fit lowers it."""

import pytest
import torch

from genbook import data
from genbook.autoencoder import Autoencoder, AutoencoderConfig, reconstruction_loss
from genbook.train import fit


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(latent_dim=4, width=16))


def test_autoencoder_shapes(model):
    """encode maps (B, 1, 8, 8) to (B, d); decode maps back to (B, 1, 8, 8) in (0, 1)."""
    x = data.digits("val").unit()[:5]
    z = model.encode(x)
    assert z.shape == (5, 4)
    x_hat = model.decode(z)
    assert x_hat.shape == (5, 1, 8, 8)
    assert (x_hat > 0).all() and (x_hat < 1).all()
    torch.testing.assert_close(model(x), x_hat)


def test_autoencoder_rejects_wrong_image_shape(model):
    """Images that are not (B, 1, 8, 8) raise ValueError."""
    with pytest.raises(ValueError):
        model(torch.rand(2, 1, 16, 16))


def test_reconstruction_loss_is_summed_squared_error(model):
    """reconstruction_loss = (1/B) sum_b sum_pixels (x - x_hat)^2, computed pixel by pixel."""
    x = data.digits("val").unit()[:3]
    with torch.no_grad():
        x_hat = model(x)
        loss = reconstruction_loss(model, x)
    total = 0.0
    for b in range(3):
        for i in range(8):
            for j in range(8):
                total += (x[b, 0, i, j].item() - x_hat[b, 0, i, j].item()) ** 2
    assert loss.item() == pytest.approx(total / 3, rel=1e-5)


def test_fit_lowers_reconstruction_loss(model):
    """A few hundred steps of fit on 256 digits at least halve the reconstruction loss."""
    x = data.digits("train").unit()[:256]
    with torch.no_grad():
        before = reconstruction_loss(model, x).item()
    fit(model, reconstruction_loss, data.Batches(x, batch_size=64), steps=200, lr=3e-3, progress=False)
    with torch.no_grad():
        after = reconstruction_loss(model, x).item()
    assert after < 0.5 * before, (before, after)
