"""Controllable generation: classifier and classifier-free guidance, and conditional sampling
given linear measurements (inpainting, colorization, super-resolution, deblurring, any linear
inverse problem, exact or noisy) by particles (the default) or by replacement. Guidance yields a
plain ``score_fn`` that works with each sampler of :func:`scoresde.sample`."""

from .conditional import cfg_score, cfg_score_from_model, classifier_guided_score, grad_log_prob, mixture_log_posterior
from .inverse import (
    colorize,
    inpaint,
    projection_callback,
    reconstruction_guided_score,
    solve_inverse_problem,
)
from .operators import (
    AveragePool,
    CircularBlur,
    Grayscale,
    LinearOperator,
    Mask,
    Spectrum,
    decoupling_matrix,
    to_gray,
)
from .smc import ConditionalInfo, smc_inverse

__all__ = [
    "AveragePool",
    "CircularBlur",
    "ConditionalInfo",
    "Grayscale",
    "LinearOperator",
    "Mask",
    "Spectrum",
    "cfg_score",
    "cfg_score_from_model",
    "classifier_guided_score",
    "colorize",
    "decoupling_matrix",
    "grad_log_prob",
    "inpaint",
    "mixture_log_posterior",
    "projection_callback",
    "reconstruction_guided_score",
    "smc_inverse",
    "solve_inverse_problem",
    "to_gray",
]
