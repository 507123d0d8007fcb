"""Trainer: exact resume after a kill, fallback past a corrupt checkpoint, non-finite losses,
warm-up schedule, logs and sample grids, and a tiny DSM run that learns a known score."""

import json
import math
import platform
import sys

import pytest
import torch

from scoresde import checkpoint
from scoresde import train as train_module
from scoresde._tensor import append_dims
from scoresde.losses import LabelDropout
from scoresde.nets import MLP, NCSNpp
from scoresde.train import Trainer, sample_grid_fn


class TinyDSM:
    """Denoising score matching on the path ``x_t = x_0 + t z`` (sigma = t), eps target:
    ``E ||model(x_t, t) - z||^2`` with ``t ~ U[0.05, 1]``."""

    def __call__(self, model, x0, labels=None, generator=None):
        t = 0.05 + 0.95 * torch.rand(x0.shape[0], generator=generator, device=x0.device)
        z = torch.randn(x0.shape, generator=generator, device=x0.device)
        return (model(x0 + append_dims(t, x0.ndim) * z, t, labels=labels) - z).square().mean()


class KillAt:
    """Wraps a loss and raises KeyboardInterrupt on the ``n``-th call (a simulated kill)."""

    def __init__(self, loss, n):
        self.loss, self.n, self.calls = loss, n, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.loss(*args, **kwargs)


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * 0.5 + 1.0, torch.randint(0, 3, (n,), generator=g)


def _model(seed):
    torch.manual_seed(seed)
    return MLP(2, width=16, depth=1, emb_dim=8, dropout=0.2, num_classes=3, null_class=True)


def _trainer(model, loss, out_dir, **kw):
    options = dict(batch_size=8, lr=1e-2, warmup_steps=3, grad_accum=2, ema_decay=0.9,
                   ckpt_every=3, keep_last=2, log_every=2, progress=False, seed=7, out_dir=out_dir)
    return Trainer(model, loss, _data(), **{**options, **kw})


def test_kill_and_resume_repeats_the_uninterrupted_run(tmp_path):
    # classifier-free label dropout draws from the trainer's generator too
    full = _trainer(_model(0), LabelDropout(TinyDSM(), null_label=3, p_uncond=0.25), tmp_path / "full")
    reference = [r["loss"] for r in full.fit(8)]

    dying = KillAt(LabelDropout(TinyDSM(), null_label=3, p_uncond=0.25), 2 * 5 + 1)  # dies in step 6
    killed = _trainer(_model(0), dying, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        killed.fit(8)
    assert killed.step == 5 and [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [3]

    resumed = _trainer(_model(123), LabelDropout(TinyDSM(), null_label=3, p_uncond=0.25), tmp_path / "run",
                       resume=True)  # another initialisation: the state must come from the checkpoint
    assert resumed.step == 3
    history = resumed.fit(8)
    assert [r["step"] for r in history] == [4, 5, 6, 7, 8]
    assert [r["loss"] for r in history] == reference[3:]  # bit-identical on CPU
    for a, b in zip(full.ema_model.parameters(), resumed.ema_model.parameters()):
        assert torch.equal(a, b)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [6, 8]  # keep_last=2


def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path):
    trainer = _trainer(_model(0), TinyDSM(), tmp_path, keep_last=3)
    trainer.fit(6)
    newest = tmp_path / "ckpt_00000006.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ckpt_00000006.safetensors: checksum mismatch"):
        resumed = _trainer(_model(1), TinyDSM(), tmp_path, resume=True)
    assert resumed.step == 3


def test_non_finite_loss_raises_without_update(tmp_path):
    class NanAtSecondStep(TinyDSM):
        calls = 0

        def __call__(self, model, x0, labels=None, generator=None):
            self.calls += 1
            loss = super().__call__(model, x0, labels, generator)
            return loss * math.nan if self.calls > 2 else loss

    trainer = _trainer(_model(0), NanAtSecondStep(), tmp_path, ckpt_every=1)
    trainer.fit(1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(FloatingPointError, match="non-finite loss at step 2"):
        trainer.fit(3)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [1]


def test_warmup_logs_eval_and_samples(tmp_path):
    x, labels = _data()
    trainer = _trainer(_model(0), TinyDSM(), tmp_path, grad_accum=1, eval_every=2, eval_data=(x[:10], labels[:10]),
                       sample_every=4, sample_fn=lambda model, step: torch.rand(4, 1, 3, 3) * 2 - 1)
    history = trainer.fit(4)
    assert [r["lr"] for r in history] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2])
    assert [("eval_loss" in r) for r in history] == [False, True, False, True]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    # a log record holds the mean loss over its window
    assert records[0]["loss"] == pytest.approx((history[0]["loss"] + history[1]["loss"]) / 2)
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("step,loss,lr")
    assert (tmp_path / "samples" / "step_00000004.png").is_file()
    # evaluation draws fixed noise: the same model gives the same evaluation loss
    assert trainer.evaluate() == trainer.evaluate()


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_decay_closed_form_and_resume(tmp_path, schedule):
    # warm-up 3 then decay to 0 at step 9: step n (1-based) runs at lr * f((n - 1 - 3) / 6)
    decay = {"cosine": lambda u: 0.5 * (1 + math.cos(math.pi * u)), "linear": lambda u: 1 - u}[schedule]
    expected = [1e-2 * n / 3 for n in (1, 2, 3)] + [1e-2 * decay((n - 4) / 6) for n in range(4, 10)]
    full = _trainer(_model(0), TinyDSM(), tmp_path / "full", lr_schedule=schedule, decay_steps=9)
    history = full.fit(9)
    assert [r["lr"] for r in history] == pytest.approx(expected, rel=1e-12)
    assert history[3]["lr"] == pytest.approx(1e-2) and 0 < history[-1]["lr"] < 2e-3
    resumed = _trainer(_model(1), TinyDSM(), tmp_path / "full", lr_schedule=schedule, decay_steps=9, resume=True)
    assert resumed.step == 9 and resumed.fit(9) == []
    _copy_checkpoint(tmp_path / "full", tmp_path / "part", 6)
    part = _trainer(_model(1), TinyDSM(), tmp_path / "part", lr_schedule=schedule, decay_steps=9, resume=True)
    assert [r["loss"] for r in part.fit(9)] == [r["loss"] for r in history[6:]]
    # a run no longer than its warm-up (a short debug run of a preset) has no decay phase
    short = _trainer(_model(0), TinyDSM(), None, lr_schedule=schedule, decay_steps=2).fit(2)
    assert [r["lr"] for r in short] == pytest.approx([1e-2 / 3, 2e-2 / 3])


@pytest.mark.parametrize("bad", [dict(lr_schedule="step"), dict(lr_schedule="cosine"),
                                 dict(lr_schedule="cosine", decay_steps=0)])
def test_bad_lr_schedules_are_refused(bad):
    with pytest.raises(ValueError, match="lr_schedule"):
        _trainer(_model(0), TinyDSM(), None, **bad)


def test_plain_iterable_data_and_bf16_autocast(tmp_path):
    x, _ = _data()
    batches = [x[i:i + 8] for i in range(0, 48, 8)]  # a plain iterable of tensors, no state
    model = MLP(2, width=16, depth=1, emb_dim=8)
    trainer = Trainer(model, TinyDSM(), batches, amp="bf16", out_dir=tmp_path, ckpt_every=2, progress=False)
    assert trainer.autocast_dtype == torch.bfloat16
    assert all(math.isfinite(r["loss"]) for r in trainer.fit(4))
    assert Trainer(MLP(2), TinyDSM(), batches, progress=False).autocast_dtype is None  # "auto" on CPU: off
    with pytest.warns(UserWarning, match="no state_dict"):
        Trainer(MLP(2, width=16, depth=1, emb_dim=8), TinyDSM(), batches, out_dir=tmp_path, resume=True,
                progress=False)
    with pytest.raises(ValueError, match="amp"):
        Trainer(model, TinyDSM(), batches, amp="fp8")


def test_channels_last_matches_default_layout():
    # NHWC only changes the order of float operations inside convolutions: the losses of a
    # few steps agree to float32 rounding, amplified a little by the optimizer (rtol 1e-4).
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    losses = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = NCSNpp(in_channels=1, image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1,
                       attn_resolutions=(4,), dropout=0.1)
        trainer = Trainer(model, TinyDSM(), images, batch_size=8, lr=1e-3, channels_last=channels_last,
                          progress=False)
        losses.append([r["loss"] for r in trainer.fit(3)])
    assert trainer.model.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=0)


def test_sample_grid_fn_draws_fixed_samples_through_the_sampling_api(tmp_path):
    from scoresde.sde import VPSDE

    torch.manual_seed(0)
    model = NCSNpp(in_channels=1, image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                   num_classes=3)
    sample_fn = sample_grid_fn(VPSDE(), (4, 1, 8, 8), labels=torch.arange(4) % 3, steps=3, seed=5)
    first = sample_fn(model, 1)
    assert first.shape == (4, 1, 8, 8) and torch.isfinite(first).all()
    assert torch.equal(first, sample_fn(model, 2))  # same seed at every call
    trainer = Trainer(model, TinyDSM(), (torch.randn(8, 1, 8, 8), torch.arange(8) % 3), batch_size=4,
                      sample_every=1, sample_fn=sample_fn, out_dir=tmp_path, progress=False)
    trainer.fit(1)
    assert (tmp_path / "samples" / "step_00000001.png").is_file()


def test_trainer_learns_a_gaussian_score():
    # Data N(mu, s^2 I) under x_t = x_0 + t z has score -(x - mu) / (s^2 + t^2), i.e. an exact
    # eps target eps*(x, t) = t (x - mu) / (s^2 + t^2). A short run must get close to it.
    mu, s = 1.0, 0.5
    g = torch.Generator().manual_seed(0)
    data = mu + s * torch.randn(2048, 2, generator=g)
    torch.manual_seed(0)
    model = MLP(2, width=32, depth=2, emb_dim=16)
    trainer = Trainer(model, TinyDSM(), data, batch_size=256, lr=3e-3, ema_decay=0.9, progress=False, seed=0)
    trainer.fit(250)
    x = mu + torch.randn(512, 2, generator=g) * math.sqrt(s**2 + 0.25)
    t = torch.full((512,), 0.5)
    target = 0.5 * (x - mu) / (s**2 + 0.25)
    with torch.no_grad():
        err = (trainer.ema_model(x, t) - target).square().mean() / target.square().mean()
    # Relative MSE of the learned eps at t = 0.5: an untrained (zero-output) model scores 1.0;
    # 0.05 leaves room for the finite run and is far below what a broken trainer reaches.
    print(f"relative MSE of the learned eps: {float(err):.4f}")
    assert err < 0.05, float(err)


@pytest.mark.parametrize("bad", [dict(lr=float("nan")), dict(lr=0.0), dict(lr=float("inf")), dict(warmup_steps=-1),
                                 dict(grad_clip=-1.0), dict(grad_clip=0.0), dict(betas=(0.9, 1.0)), dict(adam_eps=0.0)])
def test_bad_optimiser_settings_are_refused(bad):
    # grad_clip < 0 would flip the gradient in clip_grad_norm_'s scale factor; lr NaN poisons every weight
    with pytest.raises(ValueError, match=next(iter(bad))):
        Trainer(MLP(2, width=8, depth=1), TinyDSM(), torch.randn(16, 2), batch_size=4, progress=False, **bad)


def test_a_learning_rate_beyond_float32_is_a_clear_non_finite_error():
    # Adam's step size lr / (1 - beta1) = 1e39 does not fit in float32: one clear FloatingPointError
    trainer = Trainer(MLP(2, width=8, depth=1), TinyDSM(), torch.randn(16, 2), batch_size=4, lr=1e38, progress=False)
    with pytest.raises(FloatingPointError, match="lr"):
        for _ in range(3):
            trainer.train_step()


# ---------------------------------------------------------------- speed options (issue 18)

def _unet(seed):
    torch.manual_seed(seed)
    return NCSNpp(in_channels=1, image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                  dropout=0.1)


_IMAGES = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
_POINTS = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))


def _mlp(seed):
    torch.manual_seed(seed)
    return MLP(2, width=16, depth=1, emb_dim=8, dropout=0.2)


def _aot_eager(monkeypatch):
    """torch.compile through dynamo and AOT autograd with eager kernels: the Trainer's compile
    path in a second, where inductor's C++ code generation takes minutes on this CPU."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compile_(module, backend="aot_eager", **kw))


def _speed_trainer(model, out_dir, **options):
    """A trainer whose plain step is float32 (``amp="none"``) unless ``options`` say otherwise."""
    data = _IMAGES if isinstance(model, NCSNpp) else _POINTS
    return Trainer(model, TinyDSM(), data, batch_size=8, lr=1e-3, ckpt_every=2, keep_last=5, seed=3,
                   progress=False, out_dir=out_dir, **{"amp": "none", **options})


def test_amp_auto_is_bf16_only_for_convolutional_networks_on_a_cpu_with_native_bf16(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(train_module, "native_cpu_bf16", lambda native=native: native)
        assert train_module.amp_pays(cpu, _unet(0)) is native
        assert train_module.amp_pays(cpu, _mlp(0)) is False
        assert train_module.amp_pays(cuda, _unet(0)) is False
        trainer = Trainer(_unet(0), TinyDSM(), _IMAGES, batch_size=8, progress=False)
        assert trainer.autocast_dtype == (torch.bfloat16 if native else None)
        assert Trainer(_unet(0), TinyDSM(), _IMAGES, batch_size=8, amp="none", progress=False).autocast_dtype is None


def test_channels_last_auto_is_nhwc_for_convolutional_networks_under_cpu_bf16():
    cpu, cuda, bf16 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16
    assert train_module.channels_last_pays(cpu, bf16, _unet(0)) is True
    assert train_module.channels_last_pays(cpu, None, _unet(0)) is False
    assert train_module.channels_last_pays(cpu, bf16, _mlp(0)) is False
    assert train_module.channels_last_pays(cuda, bf16, _unet(0)) is False
    for amp, layout in (("bf16", torch.channels_last), ("none", torch.contiguous_format)):
        trainer = Trainer(_unet(0), TinyDSM(), _IMAGES, batch_size=8, amp=amp, progress=False)
        assert trainer.memory_format == layout
        assert trainer.model.conv_out.weight.is_contiguous(memory_format=layout)
    with pytest.raises(ValueError, match="channels_last"):
        Trainer(_unet(0), TinyDSM(), _IMAGES, batch_size=8, channels_last="yes", progress=False)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"),
                    reason="glibc's mallopt (Linux) and flushing subnormals (SSE3) are x86-64 Linux settings")
def test_cpu_process_settings_take_effect():
    # mallopt returns 0 for a parameter or value glibc rejects (e.g. an mmap threshold above 32 MiB)
    assert train_module.tune_cpu_process() == {"keep_cpu_memory": True, "flush_denormal": True}
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # subnormal: below 2^-126 = 1.18e-38
    assert (tiny * 1.0).item() == 0.0 and (torch.tensor([2e-38]) * 1.0).item() == pytest.approx(2e-38)


def _copy_checkpoint(src, dst, step):
    dst.mkdir()
    for path in src.glob(f"ckpt_{step:08d}*"):
        (dst / path.name).write_bytes(path.read_bytes())


# Tolerances on the losses of 4 steps. fused / foreach Adam and NHWC convolutions reorder float32
# sums (relative rounding ~1e-7 per operation, amplified by the optimiser over a few steps): 1e-4.
# bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.2 % per matmul / conv input); the loss is a
# mean over many outputs whose rounding errors partly cancel: 5e-3. The steps' losses differ from
# each other by more than 3x that (asserted below), so a step that trains on other data, noise or
# weights fails every tolerance. compile runs on the tiny MLP (dynamo traces a U-Net for ~20 s here).
SPEED_OPTIONS = {
    "for-loop Adam": (dict(optimizer_impl="for-loop"), 1e-4, _unet),
    "foreach Adam": (dict(optimizer_impl="foreach"), 1e-4, _unet),
    "channels_last": (dict(channels_last=True), 1e-4, _unet),
    "bf16 autocast": (dict(amp="bf16"), 5e-3, _unet),  # channels_last "auto": NHWC under bf16 on CPU
    "bf16 autocast, NCHW": (dict(amp="bf16", channels_last=False), 5e-3, _unet),
    "compile": (dict(compile=True), 1e-4, _mlp),
}


@pytest.mark.parametrize("name", list(SPEED_OPTIONS))
def test_speed_option_gives_the_plain_losses_and_resumes_its_checkpoints(tmp_path, monkeypatch, name):
    options, rtol, net = SPEED_OPTIONS[name]
    if name == "compile":
        _aot_eager(monkeypatch)
    plain = _speed_trainer(net(0), tmp_path / "plain")
    reference = [r["loss"] for r in plain.fit(4)]
    assert min(abs(a / b - 1) for a in reference for b in reference if a != b) > 3 * rtol
    fast = _speed_trainer(net(0), tmp_path / "fast", **options)
    assert fast.compiled == (name == "compile")
    losses = [r["loss"] for r in fast.fit(4)]
    torch.testing.assert_close(losses, reference, rtol=rtol, atol=0)
    # every checkpoint holds the plain network's names (no "_orig_mod." of a compiled module)
    assert checkpoint.load(checkpoint.list_checkpoints(tmp_path / "fast")[-1][1]).tensors.keys() == \
        checkpoint.load(checkpoint.list_checkpoints(tmp_path / "plain")[-1][1]).tensors.keys()
    # each resumes the other's checkpoint of step 2 and continues its run
    _copy_checkpoint(tmp_path / "plain", tmp_path / "fast_from_plain", 2)
    _copy_checkpoint(tmp_path / "fast", tmp_path / "plain_from_fast", 2)
    resumed = _speed_trainer(net(1), tmp_path / "fast_from_plain", resume=True, **options)
    torch.testing.assert_close([r["loss"] for r in resumed.fit(4)], reference[2:], rtol=rtol, atol=0)
    resumed = _speed_trainer(net(1), tmp_path / "plain_from_fast", resume=True)
    torch.testing.assert_close([r["loss"] for r in resumed.fit(4)], losses[2:], rtol=rtol, atol=0)


def test_grad_accum_matches_one_batch_of_the_same_items():
    # A noise-free loss without dropout: two micro-batches of 4 (consecutive slices of the same
    # permutation) average to the gradient of one batch of 8; only float32 summation order differs.
    def regression(model, x0, labels=None, generator=None):
        return (model(x0, torch.full((x0.shape[0],), 0.5)) - 0.5 * x0).square().mean()

    data = torch.randn(48, 2, generator=torch.Generator().manual_seed(0))
    runs = []
    for batch, accum in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        trainer = Trainer(MLP(2, width=16, depth=1, emb_dim=8), regression, data, batch_size=batch,
                          grad_accum=accum, lr=1e-2, progress=False)
        runs.append([r["loss"] for r in trainer.fit(5)])
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-5, atol=0)


def test_a_failing_compile_warns_once_and_continues_eagerly(tmp_path, monkeypatch):
    def broken_backend(graph, inputs):
        raise RuntimeError("no C++ compiler here")

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compile_(module, backend=broken_backend))
    reference = [r["loss"] for r in _speed_trainer(_mlp(0), None).fit(3)]
    trainer = _speed_trainer(_mlp(0), None, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed") as caught:
        losses = [r["loss"] for r in trainer.fit(3)]
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1 and not trainer.compiled
    assert losses == reference  # the failed step was redone eagerly from the same batch and seeds


def test_compile_auto_decides_at_fit_from_device_steps_and_cache(tmp_path, monkeypatch):
    from scoresde import train

    assert not train.compile_pays(torch.device("cpu"), 10**9, warm=True)  # never paid on CPU
    assert not train.compile_pays(torch.device("cuda"), train.AUTO_COMPILE_MIN_STEPS - 1, warm=False)
    assert train.compile_pays(torch.device("cuda"), train.AUTO_COMPILE_MIN_STEPS, warm=False)
    assert train.compile_pays(torch.device("cuda"), 10, warm=True)
    _aot_eager(monkeypatch)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(train, "compile_pays", lambda device, steps_left, warm: steps_left >= 3 or warm)
    trainer = _speed_trainer(_mlp(0), None, compile="auto")
    trainer.fit(2)
    assert not trainer.compiled  # 2 steps left: not worth it
    trainer = _speed_trainer(_mlp(0), None, compile="auto")
    trainer.fit(3)
    assert trainer.compiled and trainer._compile_marker().is_file()  # a successful compile marks the cache warm
    trainer = _speed_trainer(_mlp(0), None, compile="auto")
    trainer.fit(1)
    assert trainer.compiled  # a warm cache: compiling costs seconds, so even a short run compiles
    with pytest.raises(ValueError, match="compile"):
        _speed_trainer(_mlp(0), None, compile="yes")


def test_a_compiled_model_given_to_the_trainer_keeps_plain_checkpoint_names(tmp_path, monkeypatch):
    _aot_eager(monkeypatch)
    model = _mlp(0)
    trainer = _speed_trainer(torch.compile(model), tmp_path)
    assert trainer.model is model and not any("_orig_mod" in k for k, _ in trainer.state()[0].items())


def test_eval_fn_figures_join_the_records_and_the_log(tmp_path):
    calls = []

    def eval_fn(model, step):
        calls.append((step, model.training))
        return {"fid": 10.0 / step}

    trainer = _trainer(_model(0), TinyDSM(), tmp_path, grad_accum=1, log_every=4, eval_every=3, eval_fn=eval_fn)
    history = trainer.fit(6)
    assert calls == [(3, False), (6, False)]  # the EMA model, in eval mode
    assert [r.get("fid") for r in history] == [None, None, 10 / 3, None, None, 10 / 6]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # an evaluation step writes a record even off the log period, so no figure is lost
    assert [(r["step"], r.get("fid")) for r in records] == [(3, 10 / 3), (4, None), (6, 10 / 6)]
    with pytest.raises(ValueError, match="reserved"):
        _trainer(_model(0), TinyDSM(), None, eval_every=1, eval_fn=lambda m, s: {"loss": 1.0}).fit(1)
    with pytest.raises(ValueError, match="eval_every"):
        _trainer(_model(0), TinyDSM(), None, eval_fn=eval_fn)


def test_speed_keys_of_the_config_reach_the_trainer_and_are_validated(tmp_path):
    from scoresde import config
    from scoresde.cli.runs import build_trainer, same_run

    keys = ["training.amp=bf16", "training.compile=auto", "training.grad_accum=2", "training.channels_last=true"]
    assert config.load_config("toy-2d").training.channels_last == "auto"
    cfg = config.load_config("toy-2d", keys)
    trainer = build_trainer(cfg, MLP(2, width=8, depth=1), TinyDSM(), torch.randn(512, 2), tmp_path, progress=False)
    assert (trainer.autocast_dtype, trainer.compile_mode, trainer.grad_accum, trainer.memory_format) == \
        (torch.bfloat16, "auto", 2, torch.channels_last)
    plain = config.load_config("toy-2d")
    assert same_run(plain, config.load_config("toy-2d", keys[:2] + keys[3:]))  # speed options resume each other
    assert not same_run(plain, cfg)  # grad_accum changes the batch of a step
    for bad in ("training.amp=fp16", "training.compile=maybe", "training.compile=1", "training.grad_accum=0",
                "training.channels_last=3", "training.channels_last=maybe"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            config.load_config("toy-2d", [bad])


def test_seed_generation_sharded_over_ranks_writes_the_single_process_files(tmp_path):
    # scoresde sample --seeds under torchrun: each rank draws every world_size-th group of `batch`
    # seeds; per-seed generators make the union byte-identical to one process's output.
    from scoresde.generate import generate
    from scoresde.sde import VPSDE

    def score_fn(x, t):  # the exact score of N(0, I) data under the VP SDE (unit marginals)
        return -x

    options = dict(batch=3, fmt="npz", method="ddim", steps=2, progress=False)
    generate(score_fn, VPSDE(), (2,), range(10), tmp_path / "one", **options)
    written = [generate(score_fn, VPSDE(), (2,), range(10), tmp_path / "two", rank=r, world_size=2, **options).written
               for r in (0, 1)]
    assert written == [6, 4]  # groups 0-2, 6-8 | 3-5, 9
    names = sorted(p.name for p in (tmp_path / "one").glob("seeds_*.npz"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("seeds_*.npz")) and len(names) == 4
    for path in (tmp_path / "one").glob("seeds_*.npz"):
        assert path.read_bytes() == (tmp_path / "two" / path.name).read_bytes()
    with pytest.raises(ValueError, match="rank"):
        generate(score_fn, VPSDE(), (2,), range(4), tmp_path / "bad", rank=2, world_size=2, **options)


def test_train_run_logs_fid_and_bits_per_dim_at_eval_every(tmp_path):
    # evaluation.inception + fid_ref with training.eval_every: the Trainer's eval_fn is the config's
    # TrainingMonitor, whose figures land in log.jsonl beside eval_loss (a TorchScript stand-in of
    # the Inception interface, reference statistics of the training digits).
    import warnings

    from test_eval import TINY_DIGITS
    from test_metrics import _RandomInception

    from scoresde import cli, config, metrics

    net_path = tmp_path / "standin.pt"
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # jit.script: deprecated, but how such files are made
        torch.manual_seed(1)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_RandomInception()).save(str(net_path))
    cfg = config.load_config("digits-vp", TINY_DIGITS)
    reference, _ = metrics.inception_stats(metrics.InceptionNet(net_path), [config.build_dataset(cfg).x[:64]])
    reference.save(tmp_path / "ref.npz")
    keys = [*TINY_DIGITS, "training.eval_every=2", f"evaluation.inception={net_path}",
            f"evaluation.fid_ref={tmp_path / 'ref.npz'}", "evaluation.fid_samples=6", "evaluation.fid_batch=3",
            "evaluation.likelihood_batch=2", "evaluation.rtol=1e-2", "evaluation.atol=1e-2"]
    assert cli.main(["--quiet", "train", "digits-vp", *keys, "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2 and {"eval_loss", "fid", "bpd"} <= set(record)
    assert math.isfinite(record["fid"]) and record["fid"] >= 0 and 0 < record["bpd"] < 100
