"""Controllable generation: classifier and classifier-free guidance, inpainting, colorization,
linear inverse problems, and particle inpainting. Every method yields a plain ``score_fn`` or a
sampler ``callback`` that works with each sampler of :func:`scoresde.sample`."""

from .conditional import (
    LabelDropout,
    NoisyClassifierLoss,
    cfg_score,
    cfg_score_from_model,
    classifier_accuracy,
    classifier_guided_score,
    grad_log_prob,
    mixture_log_posterior,
)
from .inverse import (
    AveragePool,
    CircularBlur,
    LinearOperator,
    Mask,
    colorize,
    decoupling_matrix,
    inpaint,
    projection_callback,
    reconstruction_guided_score,
    solve_inverse_problem,
    to_gray,
)
from .smc import SMCInfo, inpaint_smc

__all__ = [
    "AveragePool",
    "CircularBlur",
    "LabelDropout",
    "LinearOperator",
    "Mask",
    "NoisyClassifierLoss",
    "SMCInfo",
    "cfg_score",
    "cfg_score_from_model",
    "classifier_accuracy",
    "classifier_guided_score",
    "colorize",
    "decoupling_matrix",
    "grad_log_prob",
    "inpaint",
    "inpaint_smc",
    "mixture_log_posterior",
    "projection_callback",
    "reconstruction_guided_score",
    "solve_inverse_problem",
    "to_gray",
]
