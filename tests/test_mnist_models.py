"""The MNIST reference models: shapes, and the PixelCNN's autoregressive masking."""

from __future__ import annotations

import pytest
import torch

from rdloss.demo.mnist_models import ConvEncoder, DeconvDecoder, MaskedConv2d, PixelCNNDecoder


def test_shapes() -> None:
    torch.manual_seed(0)
    x = (torch.rand(3, 1, 28, 28) < 0.3).float()
    q = ConvEncoder(6)(x)
    assert q.batch_shape == (3,) and q.event_shape == (6,)
    z = q.rsample()
    for decoder in (DeconvDecoder(6), PixelCNNDecoder(6, channels=8, layers=2)):
        likelihood = decoder(z, x)
        assert likelihood.batch_shape == (3,) and likelihood.event_shape == (1, 28, 28)
        assert likelihood.log_prob(x).shape == (3,)


def test_deconv_ignores_x() -> None:
    torch.manual_seed(0)
    decoder, z = DeconvDecoder(4), torch.randn(2, 4)
    a = decoder(z, torch.zeros(2, 1, 28, 28)).base_dist.logits
    b = decoder(z, torch.ones(2, 1, 28, 28)).base_dist.logits
    assert torch.equal(a, b)


def test_pixelcnn_logit_i_depends_only_on_earlier_pixels_and_on_z() -> None:
    torch.manual_seed(0)
    decoder = PixelCNNDecoder(3, channels=6, layers=2).double()
    x = (torch.rand(1, 1, 28, 28, dtype=torch.float64) < 0.5).double()
    z = torch.randn(1, 3, dtype=torch.float64)
    jac_z, jac_x = torch.func.jacrev(lambda z, x: decoder.logits(z, x).flatten(), (0, 1))(z, x)
    jac_x = jac_x.reshape(784, 784)  # [output pixel i, input pixel j], raster order
    jac_z = jac_z.reshape(784, 3)
    later = torch.ones(784, 784, dtype=torch.bool).triu()  # j >= i
    assert jac_x[later].abs().max() == 0.0  # no pixel sees itself or a later one
    i = torch.arange(784)
    left, above = i[i % 28 > 0], i[i >= 28]
    assert (jac_x[left, left - 1] != 0).all()  # but it sees its left neighbour
    assert (jac_x[above, above - 28] != 0).all()  # and the pixel above
    assert (jac_z.abs().sum(1) > 0).all()  # every pixel's logit depends on z


@pytest.mark.parametrize(("mask", "centre"), [("A", 0.0), ("B", 1.0)])
def test_masks(mask: str, centre: float) -> None:
    conv = MaskedConv2d(2, 3, 5, mask=mask)  # type: ignore[arg-type]
    kernel = conv.mask[0, 0]
    assert kernel[2, 2] == centre and kernel[:2].all() and kernel[2, :2].all()
    assert not kernel[2, 3:].any() and not kernel[3:].any()
    assert torch.equal(conv.mask, kernel.expand(3, 2, 5, 5))


def test_even_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        MaskedConv2d(1, 1, 4, mask="A")
