"""The official score_sde score model as one network: ``model(x, t) -> score``.

The official code (Song et al. 2021, ``models/utils.py: get_score_fn``) does not feed ``t`` to its
networks; it feeds a *label* that depends on the SDE and on how the model was trained, and
turns the network output ``h`` into the score:

=====================  ====================================  ==================================
SDE, training          network input (label)                 score
=====================  ====================================  ==================================
VP / sub-VP, cont.     ``999 t``                             ``-h / std(t)``
VP, discrete           ``(N - 1) t``                         ``-h / sqrt(1 - abar[floor(label)])``
VE, continuous         ``sigma(t)`` (Fourier: ``log sigma``)  ``h / sigma`` (``scale_by_sigma``)
VE, discrete           ``round((T - t)(N - 1))`` (level)     ``h / sigmas[level]`` (``scale_by_sigma``)
=====================  ====================================  ==================================

with ``std(t)`` the marginal standard deviation (VP ``sqrt(1 - e^{2 m})``, sub-VP
``1 - e^{2 m}``, ``m = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``), ``abar`` the DDPM
products over ``beta_i = linspace(beta_min / N, beta_max / N, N)`` and ``sigmas`` the geometric
levels from ``sigma_max`` down to ``sigma_min``. Data in ``[0, 1]`` (``centered=False``) enter the
network as ``2 x - 1``. :class:`OfficialScoreModel` does exactly this around an
:class:`~scoresde.nets.NCSNpp` that embeds the label itself (``time_scale = 1``), with the
official float32 formulas (not this library's more accurate ones) and the official sinusoidal
spacing (``freq_shift=1``) so that imported weights give
the official scores to rounding. Trained here with the ``score`` parameterization and the
``sigma2`` weighting, the DSM loss is the official one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._tensor import append_dims, as_batch_time
from ..sde import VESDE, VPSDE, SubVPSDE, ddpm_betas
from .unet import PRESETS, NCSNpp

# Options of the wrapper itself; every other option is the network's (NCSNpp's).
OWN_OPTIONS = ("continuous", "num_scales", "centered", "scale_by_sigma", "preset")


class OfficialScoreModel(nn.Module):
    """``model(x, t, labels=None) -> score`` with the official time input and output scaling
    (see the module docstring) around ``net = NCSNpp(**PRESETS[preset], **network)``.

    Args:
        sde: the run's :class:`~scoresde.VPSDE`, :class:`~scoresde.SubVPSDE` or
            :class:`~scoresde.VESDE` (``scoresde.config.build_model`` passes it).
        continuous: trained in continuous time (the official ``training.continuous``).
        num_scales: ``N``, the official ``model.num_scales``.
        centered: data in ``[-1, 1]``; False: ``[0, 1]``, mapped to ``2 x - 1`` for the network.
        scale_by_sigma: divide the output by the noise level (VE models).
        preset: a :data:`~scoresde.nets.PRESETS` name the network options start from.
    """

    needs_sde = True  # scoresde.config.build_model passes the run's SDE first

    def __init__(self, sde: Any, *, continuous: bool = True, num_scales: int = 1000, centered: bool = True,
                 scale_by_sigma: bool = False, preset: str | None = None, **network: Any):
        super().__init__()
        if not isinstance(sde, (VPSDE, VESDE)):
            raise ValueError(f"sde must be a VPSDE, SubVPSDE or VESDE for an official score model, got {type(sde).__name__}")
        if num_scales < 2:
            raise ValueError(f"num_scales must be >= 2, got {num_scales}")
        if scale_by_sigma and not isinstance(sde, VESDE):
            raise ValueError("scale_by_sigma applies to VE models only (VP scores are -h / std)")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
        # The network embeds the official label itself, with the official sinusoidal spacing.
        options = {**(PRESETS[preset] if preset else {}), **network, "time_scale": 1.0, "freq_shift": 1}
        self.net = NCSNpp(**options)
        self.config: dict[str, Any] = {"continuous": continuous, "num_scales": num_scales, "centered": centered,
                                       "scale_by_sigma": scale_by_sigma, "preset": preset, **network}
        self.sde, self.continuous, self.N = sde, bool(continuous), int(num_scales)
        self.centered, self.scale_by_sigma = bool(centered), bool(scale_by_sigma)
        self.fourier = self.net.embed is not None and self.net.embed.embedding == "fourier"
        if self.fourier and not (continuous and isinstance(sde, VESDE)):
            raise ValueError("the Fourier embedding of log sigma needs a continuous VE model")
        if isinstance(sde, VESDE):
            levels = torch.linspace(math.log(sde.sigma_max), math.log(sde.sigma_min), self.N, dtype=torch.float64)
            self.register_buffer("sigmas", levels.exp(), persistent=False)
        elif not (continuous or isinstance(sde, SubVPSDE)):
            abar = torch.cumprod(1 - ddpm_betas(self.N, sde.beta_min, sde.beta_max).float(), 0)  # float32 as official
            self.register_buffer("discrete_std", (1 - abar).sqrt(), persistent=False)

    @property
    def null_label(self) -> int | None:
        return self.net.null_label

    def _log_mean_coeff(self, t: Tensor) -> Tensor:
        b0, b1 = self.sde.beta_min, self.sde.beta_max
        return -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0

    def label(self, t: Tensor) -> Tensor:
        """The official network input at times ``t`` (float; the level index for discrete VE)."""
        sde = self.sde
        if isinstance(sde, VESDE):
            if self.continuous:
                return sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
            return torch.round((sde.T - t) * (self.N - 1))
        if self.continuous or isinstance(sde, SubVPSDE):
            return t * 999
        return t * (self.N - 1)

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        t = as_batch_time(t, x)
        label = self.label(t)
        h = self.net(x if self.centered else 2 * x - 1, label.log() if self.fourier else label, labels)
        if isinstance(self.sde, VESDE):
            if not self.scale_by_sigma:
                return h
            used = label if self.fourier else self.sigmas[label.long()]  # official: the level's sigma
            return h / append_dims(used.to(h.dtype), h.ndim)
        if self.continuous or isinstance(self.sde, SubVPSDE):
            m = self._log_mean_coeff(t)
            std = 1 - torch.exp(2 * m) if isinstance(self.sde, SubVPSDE) else torch.sqrt(1 - torch.exp(2 * m))
        else:
            std = self.discrete_std[label.long()].to(h.dtype)
        return -h / append_dims(std, h.ndim)


def unet_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~scoresde.nets.NCSNpp` keyword arguments of a config's ``model`` section: a
    :data:`~scoresde.nets.PRESETS` name with its options, ``unet``, or ``score_sde`` (its
    network's options without the wrapper's own)."""
    if name == "score_sde":
        preset = options.get("preset")
        rest = {k: v for k, v in options.items() if k not in OWN_OPTIONS}
        return {**(PRESETS[preset] if preset else {}), **rest}
    return {**PRESETS.get(name, {}), **options}
