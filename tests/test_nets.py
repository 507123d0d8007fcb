"""Tests of the score networks: shapes, options, embeddings and FIR resampling in closed form,
and the parameter counts of the paper's presets (built on the meta device)."""

import math

import pytest
import torch
import torch.nn.functional as F

import scoresde as sd
from scoresde.nets import (
    MLP,
    PRESETS,
    MLPClassifier,
    NCSNpp,
    OfficialScoreModel,
    TimeEmbedding,
    UNetClassifier,
    build_preset,
    ddpmpp_digits,
    sinusoidal_embedding,
)
from scoresde.nets.layers import (
    fir_conv_downsample,
    fir_downsample,
    fir_kernel,
    fir_upsample,
    fir_upsample_conv,
    upfirdn2d,
)

TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8, dropout=0.0)


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values (the zero-initialised output layers would hide the input)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize(
    "options",
    [
        dict(resblock="biggan"),
        dict(resblock="ddpm", embedding="fourier", fir=True),
        dict(resblock="biggan", fir=True, progressive_input="input_skip", progressive="output_skip"),
        dict(resblock="ddpm", fir=True, progressive_input="residual", progressive="residual",
             skip_rescale=False, resamp_with_conv=False),
        dict(resblock="ddpm", progressive_input="residual", progressive="output_skip"),
    ],
)
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 4, 12), (3, 2, 16, 16)])
def test_unet_forward_shapes(options, shape):
    torch.manual_seed(0)
    model = NCSNpp(**TINY, in_channels=shape[1], **options)
    _randomize(model)
    x = torch.randn(shape)
    out = model(x, torch.rand(shape[0]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter takes part"


def test_unet_depends_on_time_and_input():
    model = NCSNpp(**TINY, in_channels=1)
    _randomize(model)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0.3, 0.3])
    base = model(x, t)
    assert not torch.allclose(model(x, t + 1e-2), base)
    assert not torch.allclose(model(x + 0.1, t), base)
    # A scalar time is broadcast to the batch.
    torch.testing.assert_close(model(x, 0.3), base)


def test_unet_rejects_bad_images():
    model = NCSNpp(**TINY, in_channels=3)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 3, 7, 8), torch.rand(2))  # 7 is not a multiple of 2^(levels-1) = 2
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 1, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="resblock"):
        NCSNpp(**TINY, resblock="resnet")


def test_class_conditional_unet_and_null_label():
    model = NCSNpp(**TINY, in_channels=1, num_classes=3, null_class=True)
    _randomize(model)
    assert model.null_label == 3
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    y0, y1 = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    assert not torch.allclose(model(x, t, y0), model(x, t, y1))
    torch.testing.assert_close(model(x, t, None), model(x, t, torch.full((2,), 3)))
    strict = NCSNpp(**TINY, in_channels=1, num_classes=3)
    with pytest.raises(ValueError, match="labels is None"):
        strict(x, t)
    with pytest.raises(ValueError, match="no class embedding"):
        NCSNpp(**TINY, in_channels=1)(x, t, y0)


def test_mlp_shapes_and_labels():
    model = MLP(5, width=32, depth=2, num_classes=4, null_class=True, embedding="fourier")
    _randomize(model)
    x, t = torch.randn(7, 5), torch.rand(7)
    labels = torch.randint(0, 4, (7,))
    out = model(x, t, labels)
    assert out.shape == (7, 5)
    assert not torch.allclose(out, model(x, t))
    assert model.config["dim"] == 5
    with pytest.raises(ValueError, match=r"x must have shape \(B, 5\)"):
        model(torch.randn(7, 4), t)


def test_classifiers_give_logits():
    clf = UNetClassifier(10, **TINY, in_channels=1)
    assert clf(torch.randn(3, 1, 8, 8), torch.rand(3)).shape == (3, 10)
    vclf = MLPClassifier(2, 8, width=16, depth=1)
    assert vclf(torch.randn(4, 2), torch.rand(4)).shape == (4, 8)
    with pytest.raises(ValueError, match="progressive"):
        UNetClassifier(10, progressive="output_skip")


def test_sinusoidal_embedding_closed_form():
    s = torch.tensor([0.0, 3.0, 250.0])
    for shift in (0, 1):
        e = sinusoidal_embedding(s, 8, max_period=10000.0, freq_shift=shift)
        # w_i = max_period^(-i / (half - shift)); shift 1 is the official DDPM / score_sde spacing,
        # whose first and last frequencies are exactly 1 and 1 / max_period.
        w = 10000.0 ** (-torch.arange(4) / (4 - shift))
        torch.testing.assert_close(e, torch.cat([torch.sin(s[:, None] * w), torch.cos(s[:, None] * w)], 1))


@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_time_embedding_resolves_unit_interval(embedding):
    # Raw features are sin/cos pairs, so each row has squared norm dim/2 exactly; and the
    # default time_scale must separate times 1e-3 apart in [0, 1] by a visible margin.
    torch.manual_seed(0)
    emb = TimeEmbedding(64, 32, embedding=embedding)
    t = torch.linspace(0, 1, 11)
    raw = emb.raw(t)
    torch.testing.assert_close(raw.square().sum(1), torch.full((11,), 32.0))
    gap = (emb.raw(t + 1e-3) - raw).norm(dim=1)
    assert gap.min() > 1e-2


def test_fir_resampling_closed_forms():
    x = torch.randn(2, 3, 8, 8)
    box = fir_kernel((1, 1))
    # The 2-tap box filter: down-sampling is 2x2 average pooling, up-sampling is nearest.
    torch.testing.assert_close(fir_downsample(x, box), F.avg_pool2d(x, 2))
    torch.testing.assert_close(fir_upsample(x, box), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    # [1, 3, 3, 1]: unit DC gain, so a constant image stays constant away from the border.
    k = fir_kernel((1, 3, 3, 1))
    ones = torch.ones(1, 1, 8, 8)
    torch.testing.assert_close(fir_downsample(ones, k)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(fir_upsample(ones, k)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
    # A linear ramp is reproduced by the symmetric filter: up-sampled samples sit at half steps.
    ramp = torch.arange(8.0).expand(1, 1, 8, 8)
    up = fir_upsample(ramp, k)[0, 0, 4, 2:-2]
    torch.testing.assert_close(up, (torch.arange(2, 14.0) - 0.5) / 2)


# Parameter counts the paper / official code report (ANCHORS.md); 3 significant digits.
PAPER_COUNTS = {"ddpmpp_cifar10": 61.8e6, "ncsnpp_cifar10": 62.8e6, "ddpmpp_digits": 1.75e6}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts(name):
    with torch.device("meta"):
        model = build_preset(name)
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n:,} parameters ({n / 1e6:.3f} M); paper {PAPER_COUNTS.get(name, 'n/a')}")
    if name in PAPER_COUNTS:
        # The paper rounds to 3 significant digits: the count must agree to that precision.
        assert abs(n - PAPER_COUNTS[name]) <= 0.005 * PAPER_COUNTS[name] + 1
    assert model.config == {**model.config, **PRESETS[name]}


def test_digits_preset_runs():
    model = ddpmpp_digits()
    x = torch.randn(2, 1, 8, 8)
    assert model(x, torch.rand(2)).shape == x.shape
    assert math.isclose(model.embed.time_scale, 1000.0)


# The vector MLP follows the tails.  A bounded head on layer-normalised features cannot output
# ``eps ~ c(t) x`` for prior draws far in the tails; deterministic samplers then throw about 1% of
# samples out to |x| ~ 100 (172 on this problem with the head alone).  The gated input path of
# ``MLP`` removes that.


def test_eps_mlp_samples_stay_on_the_data_scale():
    torch.manual_seed(0)
    sde = sd.VPSDE()
    gmm = sd.GaussianMixture.named("ring2d")
    x0 = gmm.sample(4096, generator=torch.Generator().manual_seed(0))[0] / 2  # radius 1, std 0.1
    model = MLP(dim=2, width=128, depth=2)
    trainer = sd.Trainer(model, sd.DSMLoss(sde, "eps"), x0, batch_size=256, lr=1e-3, ema_decay=0.99,
                         progress=False, seed=0)
    trainer.fit(600)
    score_fn = sd.score_fn_from_model(trainer.ema_model, sde, "eps")
    x, _ = sd.sample(score_fn, sde, shape=(8192, 2), method="dpm-solver++", steps=20,
                     generator=torch.Generator().manual_seed(1))
    # The data lie within radius 1 + 5 std = 1.5; a sample beyond 3 is an escaped tail draw.
    assert torch.isfinite(x).all()
    assert x.abs().max() < 3.0, float(x.abs().max())


def test_gated_path_passes_the_input_through():
    model = MLP(dim=2, width=16, depth=1)
    with torch.no_grad():
        model.gain.bias.fill_(1.0)  # heads zero but the gate's bias: output = x exactly
    x = torch.tensor([[1e3, -2e3], [0.5, 0.25]])
    assert torch.equal(model(x, torch.tensor([0.5, 0.9])), x)


def test_upfirdn2d_is_a_true_convolution():
    # A one-sided kernel [[0, 1], [0, 0]] convolved (not correlated): out[i, j] = x[i, j - 1] after
    # padding by one before, i.e. a shift right by one pixel; zero insertion puts x at even pixels.
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    k = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    out = upfirdn2d(x, k, pad=(1, 0))
    torch.testing.assert_close(out[0, 0, :, 1:], x[0, 0, :, :3])
    up = upfirdn2d(x, torch.ones(1, 1), up=2)
    torch.testing.assert_close(up[0, 0, ::2, ::2], x[0, 0])
    assert up[0, 0, 1::2].abs().sum() == 0 and up.shape[-1] == 8


def test_fused_fir_resampling_equals_the_unfused_pair_inside():
    # StyleGAN2's fused ops pad once, so "conv after FIR up-sampling" and "FIR down-sampling after
    # conv" agree exactly away from the border (2 pixels up, 1 down); float32 sums of ~40 terms.
    torch.manual_seed(0)
    x, k = torch.randn(2, 3, 8, 8), fir_kernel((1, 3, 3, 1))
    layer = torch.nn.Conv2d(3, 5, 3, padding=1)
    up = fir_upsample_conv(x, layer, k)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], layer(fir_upsample(x, k))[..., 2:-2, 2:-2], atol=1e-5, rtol=1e-5)
    down = fir_conv_downsample(x, layer, k)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], fir_downsample(layer(x), k)[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)
    assert up.shape == (2, 5, 16, 16) and down.shape == (2, 5, 4, 4)


def test_ddpm_options_norm_groups_and_unconditional():
    model = NCSNpp(**{**TINY, "nf": 32}, in_channels=1, resblock="ddpm", skip_rescale=False, norm_groups=32,
                   conditional=False)
    _randomize(model)
    assert model.embed is None
    assert all(m.num_groups == 32 for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x, torch.rand(2)), model(x, torch.rand(2)))  # time is not an input
    with pytest.raises(ValueError, match="norm_groups must divide"):
        NCSNpp(**TINY, norm_groups=32)  # nf 8 channels


@pytest.mark.parametrize("kind", ["vp", "subvp", "vp-discrete", "ve", "ve-discrete"])
def test_official_score_model_time_input_and_scaling(kind):
    # The official get_score_fn in closed form around the same network: label(t), input map and
    # output scale; the identical operations give equality to float32 rounding (rtol 1e-6).
    sde = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "vp-discrete": sd.VPSDE(), "ve": sd.VESDE(),
           "ve-discrete": sd.VESDE()}[kind]
    continuous = not kind.endswith("discrete")
    fourier = kind == "ve"
    torch.manual_seed(0)
    model = OfficialScoreModel(sde, continuous=continuous, num_scales=100, centered=not kind.startswith("ve"),
                               scale_by_sigma=kind.startswith("ve"), **TINY, in_channels=1,
                               embedding="fourier" if fourier else "positional")
    _randomize(model)
    x, t = torch.rand(3, 1, 8, 8), torch.tensor([0.02, 0.5, 0.97])
    m = -0.25 * t**2 * (20.0 - 0.1) - 0.05 * t
    if kind.startswith("ve"):
        if continuous:
            sigma = 0.01 * 5000.0**t
            label, scale = sigma.log(), 1 / sigma
        else:
            label = torch.round((1 - t) * 99)
            scale = 1 / (50.0 * (0.01 / 50.0) ** (label / 99))
        h = model.net(2 * x - 1, label)
    else:
        label = t * (999 if continuous else 99)
        std = {"vp": (1 - (2 * m).exp()).sqrt(), "subvp": 1 - (2 * m).exp()}.get(kind)
        if std is None:
            abar = torch.cumprod(1 - torch.linspace(0.1 / 100, 20.0 / 100, 100), 0)  # official: float32
            std = (1 - abar[label.long()]).sqrt()
        h, scale = model.net(x, label), -1 / std
    torch.testing.assert_close(model(x, t), h * scale[:, None, None, None], rtol=1e-6, atol=1e-6)


def test_ddpm_init_is_the_official_variance_scaling():
    # Uniform on [-b, b] with b = sqrt(3 scale / fan_avg): every weight within b, the largest of
    # hundreds of draws within 5% of it; q, k, v and DDPM shortcuts at scale 0.1, last layers zero.
    torch.manual_seed(0)
    model = NCSNpp(**{**TINY, "nf": 16}, in_channels=3, resblock="ddpm", init="ddpm")

    def check(w, scale):
        fan_avg = (w.shape[0] + w.shape[1]) * w[0, 0].numel() / 2 if w.ndim > 2 else sum(w.shape) / 2
        bound = math.sqrt(3 * scale / fan_avg)
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound

    block = model.encoder.levels[1].blocks[0]  # 16 -> 32 channels: a 1x1 (NIN) shortcut
    check(block.conv0.weight, 1.0)
    check(block.dense.weight, 1.0)
    check(block.skip.weight, 0.1)
    assert block.conv1.weight.abs().max() == 0 and block.conv0.bias.abs().max() == 0
    attn = model.mid[1]
    for w in attn.qkv.weight.chunk(3):
        check(w, 0.1)
    assert attn.out.weight.abs().max() == 0 and model.conv_out.weight.abs().max() == 0
    check(model.embed.mlp[0].weight, 1.0)


def test_cpu_matmul_attention_equals_the_fused_kernel():
    from scoresde.nets.layers import CPU_MATMUL_ATTENTION_MAX_PIXELS, attention

    g = torch.Generator().manual_seed(0)
    for pixels in (16, CPU_MATMUL_ATTENTION_MAX_PIXELS, CPU_MATMUL_ATTENTION_MAX_PIXELS + 1):
        q, k, v = (torch.randn(2, 1, pixels, 8, generator=g, dtype=torch.float64) for _ in range(3))
        # float64: the two orders of the same sums agree to ~1e-15
        torch.testing.assert_close(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v),
                                   rtol=1e-12, atol=1e-12)


def test_channels_last_bf16_group_norm_is_float32_group_norm_rounded_once():
    """The channels-last bf16 path normalises in float32 and rounds once: its output and input
    gradient are the float64 GroupNorm of the same bf16 input (and bf16 output gradient) within
    one bf16 rounding of the result (2^-8 relative, plus the float32 statistics); the parameter
    gradients, summed in float32, to 1e-5. It saves the bf16 input, no float32 copy."""
    from scoresde.nets.layers import GroupNorm

    g = torch.Generator().manual_seed(0)
    norm = GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, generator=g))
        norm.bias.copy_(torch.randn(16, generator=g))
    x = (3 * torch.randn(6, 16, 5, 7, generator=g) + 2).bfloat16().contiguous(memory_format=torch.channels_last)
    grad = torch.randn(6, 16, 5, 7, generator=g).bfloat16()
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = norm(x)
    y.backward(grad)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert all(t.dtype != torch.float32 or t.numel() < x.numel() for t in saved)
    x64 = x.detach().double().requires_grad_()
    w64, b64 = (p.detach().double().requires_grad_() for p in (norm.weight, norm.bias))
    y64 = F.group_norm(x64, 4, w64, b64, 1e-6)
    y64.backward(grad.double())
    for ours, exact in ((y, y64), (x.grad, x64.grad)):
        torch.testing.assert_close(ours.double(), exact, rtol=2**-8, atol=2**-8 * exact.abs().max().item() * 1e-2)
    torch.testing.assert_close(norm.weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.bias.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)


def test_small_image_convolution_gradients_against_float64():
    """On channels-last bf16 images of <= SMALL_IMAGE_PIXELS pixels (3x3 'same' convolutions, as
    autocast runs them from float32 weights) the output and the input, weight and
    bias gradients are the float64 convolution's of the same bf16-rounded tensors within one bf16
    rounding of each result (2^-8 relative; float32 accumulation adds ~1e-6) plus 2^-8 of the
    largest entry for the entries that cancel; the weight gradient reaches the float32 weight in
    float32. A larger image, NCHW, float32, a 1x1 kernel or stride 2 takes nn.Conv2d's own path."""
    from scoresde.nets.layers import SMALL_IMAGE_PIXELS, Conv2d

    g = torch.Generator().manual_seed(0)
    for cin, cout, k, side in ((16, 8, 3, 2), (8, 16, 3, 4), (4, 4, 3, 3)):
        assert side * side <= SMALL_IMAGE_PIXELS
        layer = Conv2d(cin, cout, k, padding=k // 2).to(memory_format=torch.channels_last)
        with torch.no_grad():
            layer.bias.copy_(torch.randn(cout, generator=g))
        x = torch.randn(32, cin, side, side, generator=g).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(32, cout, side, side, generator=g).bfloat16()
        x.requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            y = layer(x)
        assert type(y.grad_fn).__name__ == "_SmallImageConvBackward"
        y.backward(grad)
        assert y.dtype == torch.bfloat16 and layer.weight.grad.dtype == torch.float32
        x64, w64, b64 = (t.detach().bfloat16().double().requires_grad_() for t in (x, layer.weight, layer.bias))
        y64 = F.conv2d(x64, w64, b64, padding=k // 2)
        y64.backward(grad.double())
        for ours, exact in ((y, y64), (x.grad, x64.grad), (layer.weight.grad, w64.grad), (layer.bias.grad, b64.grad)):
            torch.testing.assert_close(ours.double(), exact, rtol=2**-8, atol=2**-8 * exact.abs().max().item())
    layer = Conv2d(4, 4, 3, padding=1)
    small = torch.randn(2, 4, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        assert type(layer(small).grad_fn).__name__ == "_SmallImageConvBackward"
        for other in (torch.randn(2, 4, 5, 4).contiguous(memory_format=torch.channels_last),  # 20 pixels
                      torch.randn(2, 4, 4, 4)):  # NCHW
            assert type(layer(other).grad_fn).__name__ == "ConvolutionBackward0"
        for other_layer in (Conv2d(4, 4, 3, stride=2, padding=1), Conv2d(4, 4, 1)):
            assert type(other_layer(small).grad_fn).__name__ == "ConvolutionBackward0"
    assert type(layer(small).grad_fn).__name__ == "ConvolutionBackward0"  # float32
