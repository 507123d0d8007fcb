"""EMA of weights against its closed form."""

import pytest
import torch
from torch import nn

from scoresde.ema import EMA


def _net(value: float) -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


def test_constant_target_closed_form():
    # With the live weights held at theta1, n updates give theta1 + d^n (theta0 - theta1).
    net = _net(0.0)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    net.train()(torch.randn(4, 3))  # changes BatchNorm buffers, which must be copied
    for _ in range(5):
        ema.update(net)
    for p in ema.model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1 - 0.9**5))
    torch.testing.assert_close(ema.model[1].running_mean, net[1].running_mean)
    assert ema.num_updates == 5


def test_warmup_decay_schedule():
    ema = EMA(_net(0.0), decay=0.999, warmup=True)
    net = _net(1.0)
    expected = 0.0
    for n in range(3):
        d = min(0.999, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(net)
        expected = d * expected + (1 - d)
    torch.testing.assert_close(ema.model[0].weight, torch.full((2, 3), expected))


def test_swap_copy_and_state_roundtrip():
    net = _net(2.0)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.fill_(4.0)
    ema.update(net)  # EMA weight = 3
    with ema.swap(net) as swapped:
        torch.testing.assert_close(swapped[0].weight, torch.full((2, 3), 3.0))
    torch.testing.assert_close(net[0].weight, torch.full((2, 3), 4.0))
    other = EMA(_net(0.0), decay=0.1)
    other.load_state_dict(ema.state_dict(), ema.meta())
    assert other.meta() == ema.meta()
    other.copy_to(net)
    torch.testing.assert_close(net[0].weight, torch.full((2, 3), 3.0))
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)
