"""Score networks: NCSN++ / DDPM++ U-Nets, a residual MLP for vectors, and noise-conditional
classifiers. Every score network is called ``model(x, t, labels=None)`` with continuous time
``t`` in ``[0, T]``."""

from .classifier import MLPClassifier, UNetClassifier
from .embeddings import GaussianFourierEmbedding, TimeEmbedding, sinusoidal_embedding
from .mlp import MLP
from .score_sde import OfficialScoreModel, unet_options
from .unet import (
    PRESETS,
    NCSNpp,
    UNetConfig,
    build_preset,
    ddpmpp_cifar10,
    ddpmpp_deep_cifar10,
    ddpmpp_digits,
    ncsnpp_cifar10,
    ncsnpp_deep_cifar10,
)

__all__ = [
    "MLP",
    "PRESETS",
    "GaussianFourierEmbedding",
    "MLPClassifier",
    "NCSNpp",
    "OfficialScoreModel",
    "TimeEmbedding",
    "UNetClassifier",
    "UNetConfig",
    "build_preset",
    "ddpmpp_cifar10",
    "ddpmpp_deep_cifar10",
    "ddpmpp_digits",
    "ncsnpp_cifar10",
    "ncsnpp_deep_cifar10",
    "sinusoidal_embedding",
    "unet_options",
]
