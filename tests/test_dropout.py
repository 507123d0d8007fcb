"""scoresde.nets.dropout: the fast CPU dropout against the Bernoulli closed form."""

import math

import pytest
import torch

from scoresde.nets.dropout import Dropout, keep_mask, keep_mask_like

N = 2**20


def test_keep_rate_and_pair_independence():
    """Keep share within 4 binomial standard errors of q (sqrt(q(1-q)/N) = 2.9e-4 at N = 2^20);
    the two halves of one 64-bit draw are uncorrelated (|corr| < 4 / sqrt(N/2))."""
    torch.manual_seed(0)
    for q in (0.9, 0.5, 0.03):
        m = keep_mask((N,), q).double()
        assert abs(m.mean().item() - q) < 4 * math.sqrt(q * (1 - q) / N)
        even, odd = m[0::2], m[1::2]
        corr = torch.corrcoef(torch.stack([even, odd]))[0, 1].item()
        assert abs(corr) < 4 / math.sqrt(N / 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradient_are_the_scaled_mask(dtype):
    """Kept entries are x * fl32(1/q) computed in float32 and rounded once to x's dtype (what
    torch's own dropout does for float32; for bf16 it would round 1/q to bf16, 1.109 for 1/0.9),
    dropped ones 0; the gradient is m * fl32(1/q)."""
    torch.manual_seed(1)
    x = torch.randn(64, 32, 8, 8, dtype=dtype, requires_grad=True)
    drop = Dropout(0.1).train()
    y = drop(x)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y != 0
    scale = torch.tensor(1 / 0.9, dtype=torch.float32)
    exact = (x.detach().float() * scale).to(dtype)
    assert torch.equal(y[kept], exact[kept])
    assert abs(kept.double().mean().item() - 0.9) < 4 * math.sqrt(0.09 / x.numel())
    y.backward(torch.ones_like(y))
    grad = torch.where(kept, scale.to(dtype), torch.zeros((), dtype=dtype))
    assert torch.equal(x.grad, grad)


def test_seeded_reproducible_and_fresh_per_call():
    """torch.manual_seed fixes every mask (a resumed run restores the torch RNG state); two calls differ."""
    drop = Dropout(0.3).train()
    x = torch.ones(4096)
    torch.manual_seed(5)
    a, b = drop(x), drop(x)
    torch.manual_seed(5)
    assert torch.equal(drop(x), a) and torch.equal(drop(x), b)
    assert not torch.equal(a, b)


def test_mask_follows_the_input_layout():
    """A contiguous input gets the plain draw (seeded runs keep their masks); a channels-last input
    the same draw over its memory order, i.e. the NHWC-shaped draw permuted to NCHW axes."""
    x = torch.randn(4, 6, 3, 5)
    torch.manual_seed(2)
    plain = keep_mask(x.shape, 0.7)
    torch.manual_seed(2)
    assert torch.equal(keep_mask_like(x, 0.7), plain)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(2)
    mask = keep_mask_like(nhwc, 0.7)
    assert mask.is_contiguous(memory_format=torch.channels_last) and mask.shape == x.shape
    torch.manual_seed(2)
    assert torch.equal(mask, keep_mask((4, 3, 5, 6), 0.7).permute(0, 3, 1, 2))
    torch.manual_seed(2)
    y = Dropout(0.3).train()(nhwc.requires_grad_())
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, nhwc.detach() * mask / 0.7, rtol=1e-6, atol=0)


def test_identity_in_eval_and_at_zero_rate_and_rejects_bad_rates():
    x = torch.randn(10)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout probability"):
            Dropout(p)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU path is torch's own dropout)")
def test_cuda_uses_torch_dropout():
    torch.manual_seed(0)
    y = Dropout(0.1).train()(torch.ones(N, device="cuda"))
    assert y.device.type == "cuda"
    assert abs((y != 0).double().mean().item() - 0.9) < 4 * math.sqrt(0.09 / N)
