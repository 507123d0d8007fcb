"""Class-conditional sampling: classifier guidance and classifier-free guidance.

Both turn an unconditional (or conditional) score into the score of a sharpened conditional
``p_t(x | y) ∝ p_t(x) p_t(y | x)^w`` that any sampler accepts as a plain ``score_fn(x, t)``:

* classifier guidance (Song et al. 2021, Eq. 14, with a guidance scale ``w``):
  ``s_w(x, t, y) = s(x, t) + w grad_x log p_t(y | x)``, the gradient taken by autograd through a
  noise-conditional classifier ``log_prob_fn(x, t) -> (B, K)`` logits;
* classifier-free guidance (Ho & Salimans 2022): ``s_w = (1 + w) s(x, t, y) - w s(x, t)`` from a
  conditional and an unconditional score (one network with a null label, trained by label
  dropout: :class:`LabelDropout`).

``w = 1`` with an exact classifier, or ``w = 0`` in the classifier-free form, is exact
conditional sampling; larger ``w`` trades diversity for class fidelity.

The guidance gradient is computed inside ``torch.inference_mode(False)`` and
``torch.enable_grad()`` on a detached copy of ``x``, so a guided score works under a caller's
``torch.no_grad()`` *and* ``torch.inference_mode()``; the returned score carries no graph.

Their training objectives live with the other losses (:class:`scoresde.losses.NoisyClassifierLoss`,
:class:`scoresde.losses.LabelDropout`); a classifier's accuracy under noise is
:func:`scoresde.metrics.classifier_accuracy`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._tensor import as_batch_time, check_labels
from ..mixture import GaussianMixture
from ..score import Parameterization, ScoreFn
from ..sde import LinearSDE

LogProbFn = Callable[[Tensor, Tensor], Tensor]
"""``log_prob_fn(x, t) -> (B, K)`` logits or log-probabilities of ``p_t(y | x_t)``."""


# -- argument checks ------------------------------------------------------------------------------
def check_scale(scale: float, name: str = "scale") -> float:
    """Return a guidance scale as a float; ``ValueError`` naming it unless finite and ``>= 0``."""
    scale = float(scale)
    if not (scale >= 0.0 and scale < float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {scale}")
    return scale


def _check_labels_early(labels: Tensor | int, num_classes: int | None) -> None:
    """Early checks of constant labels (before any batch is known)."""
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    flat = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    check_labels(flat, flat.numel(), num_classes, flat.device)


# -- classifier guidance --------------------------------------------------------------------------
def grad_log_prob(log_prob_fn: LogProbFn, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """``grad_x log p_t(y | x)`` with ``log p = log_softmax(log_prob_fn(x, t))[y]``, by autograd.

    Works under ``no_grad`` and ``inference_mode``: ``x`` and ``t`` are copied into ordinary
    tensors first. Samples must not interact inside ``log_prob_fn`` (no batch statistics).
    """
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = log_prob_fn(xg, t.detach().clone())
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"log_prob_fn must return (B, K) = ({x.shape[0]}, K), got {tuple(logits.shape)}")
        labels = check_labels(labels, x.shape[0], logits.shape[1], x.device).clone()
        chosen = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, xg)
    return grad.detach()


def classifier_guided_score(
    score_fn: ScoreFn,
    log_prob_fn: LogProbFn,
    labels: Tensor | int,
    scale: float = 1.0,
    num_classes: int | None = None,
) -> ScoreFn:
    """``s_w(x, t) = s(x, t) + w grad_x log p_t(y | x)`` (Song et al. 2021, Eq. 14, scaled by ``w``).

    ``log_prob_fn(x, t)`` returns ``(B, K)`` logits of a noise-conditional classifier (a network
    ``clf(x, t) -> logits`` is one as it is; call ``clf.eval()`` first) or log-probabilities;
    ``labels`` is a class index or a ``(B,)`` tensor; ``scale`` ``w >= 0``. Cost per call: one
    ``score_fn`` evaluation plus one classifier forward and backward.
    """
    scale = check_scale(scale)
    _check_labels_early(labels, num_classes)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        t = as_batch_time(t, x)
        y = check_labels(labels, x.shape[0], num_classes, x.device)
        score = score_fn(x, t)
        if scale == 0.0:
            return score
        return score + scale * grad_log_prob(log_prob_fn, x, t, y)

    return guided


def mixture_log_posterior(gmm: GaussianMixture, sde: LinearSDE) -> LogProbFn:
    """The exact noise-conditional classifier of a Gaussian mixture:
    ``log p_t(k | x) = log w_k + log N_k,t(x) - log p_t(x)`` (``N_k,t`` the diffused component),
    computed in log space so that far-away classes keep finite gradients. Flattens ``x``."""
    components = [gmm.component(k) for k in range(gmm.num_components)]
    log_w = torch.log(gmm.weights)

    def log_prob_fn(x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        joint = torch.stack([c.log_prob(flat, t, sde) for c in components], dim=1) + log_w.to(flat)
        return torch.log_softmax(joint, dim=1)

    return log_prob_fn


# -- classifier-free guidance ---------------------------------------------------------------------
def cfg_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """``(1 + w) s(x, t, y) - w s(x, t)``."""
    return (1.0 + scale) * cond - scale * uncond


def cfg_score(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float) -> ScoreFn:
    """Classifier-free guided score ``s_w = (1 + w) s(x, t, y) - w s(x, t)`` from two score
    functions (two evaluations per call; :func:`cfg_score_from_model` batches them into one)."""
    scale = check_scale(scale)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        t = as_batch_time(t, x)
        if scale == 0.0:
            return cond_score_fn(x, t)
        return cfg_combine(cond_score_fn(x, t), uncond_score_fn(x, t), scale)

    return guided


def cfg_score_from_model(
    model: Callable[..., Tensor],
    sde: LinearSDE,
    labels: Tensor | int,
    scale: float,
    null_label: int,
    parameterization: str | Parameterization = "eps",
) -> ScoreFn:
    """Classifier-free guidance with one network ``model(x, t, labels)`` whose class table has a
    null entry ``null_label`` (the unconditional model; ``labels`` must lie in ``[0, null_label)``).

    The conditional and unconditional outputs come from **one** forward pass on the doubled
    batch ``[x, x]`` with labels ``[y, null]``; each output is turned into a score by
    ``parameterization`` and combined as ``(1 + w) s(x, t, y) - w s(x, t)``.
    """
    scale = check_scale(scale)
    if null_label < 1:
        raise ValueError(f"null_label must be >= 1 (it follows the real classes), got {null_label}")
    _check_labels_early(labels, null_label)
    param = parameterization if isinstance(parameterization, Parameterization) else Parameterization(parameterization, sde)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        t = as_batch_time(t, x)
        y = check_labels(labels, x.shape[0], null_label, x.device)
        if scale == 0.0:
            return param.score(model(x, t, labels=y), x, t)
        x2, t2 = torch.cat([x, x]), torch.cat([t, t])
        out = model(x2, t2, labels=torch.cat([y, torch.full_like(y, null_label)]))
        cond, uncond = param.score(out, x2, t2).chunk(2)
        return cfg_combine(cond, uncond, scale)

    return guided
