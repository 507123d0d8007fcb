"""scoresde.nets.dropout: the fast CPU dropout against the Bernoulli closed form."""

import math

import pytest
import torch

from scoresde.nets.dropout import Dropout, keep_mask, keep_mask_like, keep_share

N = 2**20


def test_keep_rate_and_independence_within_a_draw():
    """Keep share within 4 binomial standard errors of q' = keep_share(q) (sqrt(q(1-q)/N) = 2.9e-4
    at N = 2^20); the four 16-bit quarters of one 64-bit draw are uncorrelated: entries 1, 2 and 3
    apart, |corr| < 4 / sqrt(N) each."""
    torch.manual_seed(0)
    for q in (0.9, 0.5, 0.03):
        m = keep_mask((N,), q).double()
        assert abs(m.mean().item() - keep_share(q)) < 4 * math.sqrt(q * (1 - q) / N)
        for lag in (1, 2, 3):
            corr = torch.corrcoef(torch.stack([m[:-lag], m[lag:]]))[0, 1].item()
            assert abs(corr) < 4 / math.sqrt(N)


def test_keep_share_is_the_nearest_multiple_of_2_to_the_minus_16():
    """q' = round(q 2^16) / 2^16, so |q' - q| <= 2^-17; a share that rounds to 1 keeps everything,
    one that rounds to 0 is refused (no scale 1/q' exists)."""
    assert keep_share(0.9) == 58982 / 2**16 and abs(keep_share(0.9) - 0.9) <= 2**-17
    assert keep_share(0.5) == 0.5
    assert keep_share(1 - 2**-18) == 1.0
    assert torch.equal(keep_mask((3, 5), 1 - 2**-18), torch.ones(3, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="keep probability"):
        keep_share(2**-18)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradient_are_the_scaled_mask(dtype):
    """Kept entries are x * fl32(1/q') computed in float32 and rounded once to x's dtype (q' the
    drawn keep share, so E[y] = x; torch's own dropout scales by 1/q and, for bf16, rounds it to
    bf16 first: 1.109 for 1/0.9), dropped ones 0; the gradient is m * fl32(1/q')."""
    torch.manual_seed(1)
    x = torch.randn(64, 32, 8, 8, dtype=dtype, requires_grad=True)
    drop = Dropout(0.1).train()
    y = drop(x)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y != 0
    scale = torch.tensor(1 / keep_share(0.9), dtype=torch.float32)
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
    torch.testing.assert_close(y, nhwc.detach() * mask / keep_share(0.7), rtol=1e-6, atol=0)


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
