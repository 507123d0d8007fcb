"""A diffusers ``UNet2DModel`` as a scoresde network: :class:`DiffusersUNet`, ``model(x, t)`` at
scoresde time ``t``.  diffusers is imported lazily (``pip install scoresde[interop]``)."""

from __future__ import annotations

import json

from torch import Tensor, nn

from .._tensor import check_choice
from ..sde import VESDE

MODEL_NAME = "diffusers-unet2d"  # its name in a config's model section
TIME_INPUTS = ("timestep", "sigma")


def diffusers_package():
    """The diffusers package, or one clear error naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as err:
        raise ImportError("diffusers models need the diffusers package: pip install 'scoresde[interop]'") from err
    return diffusers


def unet_from_config(config: dict) -> nn.Module:
    """A diffusers ``UNet2DModel`` built from its config dict (random weights)."""
    return diffusers_package().UNet2DModel.from_config(config)


def unet_config(unet: nn.Module) -> dict:
    """The JSON-safe config dict of a ``UNet2DModel`` (diffusers' private ``_`` keys dropped)."""
    return json.loads(json.dumps({k: v for k, v in dict(unet.config).items() if not k.startswith("_")}))


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as scoresde networks are, ``model(x, t, labels=None)``
    with the scoresde time ``t``; it hands the network its own time input:

    * ``time_input="timestep"``: the continuous timestep ``t (N - 1)``, ``N = num_train_timesteps``
      (step ``n`` at ``t = n / (N - 1)``, :class:`~.discrete_vp.DiscreteVPSDE`);
    * ``time_input="sigma"``: the VE marginal ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``
      (:class:`~scoresde.sde.VESDE`), the noise level NCSN++ models take.

    ``unet`` is a ``UNet2DModel`` or its config dict; its tensors sit under ``unet.``.
    """

    def __init__(self, unet: nn.Module | dict, time_input: str = "timestep", num_train_timesteps: int = 1000,
                 sigma_min: float = 0.01, sigma_max: float = 1348.0) -> None:
        super().__init__()
        self.unet = unet_from_config(unet) if isinstance(unet, dict) else unet
        self.time_input = check_choice(time_input, TIME_INPUTS, "time_input")
        if int(num_train_timesteps) < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.time_scale = int(num_train_timesteps) - 1
        self._ve = VESDE(sigma_min, sigma_max) if time_input == "sigma" else None

    def network_time(self, t: Tensor) -> Tensor:
        """The network's time input at scoresde time ``t``."""
        return self._ve.sigma(t) if self._ve is not None else t * self.time_scale

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.unet(x, self.network_time(t), class_labels=labels).sample


