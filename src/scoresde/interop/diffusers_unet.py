"""A diffusers ``UNet2DModel`` as a scoresde network: :class:`DiffusersUNet`, ``model(x, t)`` at
scoresde time ``t``.  diffusers is imported lazily (``pip install scoresde[interop]``)."""

from __future__ import annotations

import json

from torch import Tensor, nn

from .._tensor import check_choice
from ..sde import LinearSDE
from .discrete_vp import SDE_NAME, DiscreteVPSDE

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
    with the scoresde time ``t`` of the run's SDE ``sde``; it hands the network its own time input:

    * ``time_input="timestep"``: the continuous timestep ``t (N - 1) / T`` of a
      :class:`~.discrete_vp.DiscreteVPSDE` of ``N`` steps (step ``n`` at ``t = n (T / (N - 1))``);
    * ``time_input="sigma"``: the marginal ``sigma(t)`` (for :class:`~scoresde.sde.VESDE`
      ``sigma_min (sigma_max / sigma_min)^t``), the noise level NCSN++ models take.

    ``unet`` is a ``UNet2DModel`` or its config dict; its tensors sit under ``unet.``.
    """

    needs_sde = True  # scoresde.config.build_model passes the run's SDE first

    def __init__(self, sde: LinearSDE, unet: nn.Module | dict, time_input: str = "timestep") -> None:
        super().__init__()
        self.time_input = check_choice(time_input, TIME_INPUTS, "time_input")
        if time_input == "timestep" and not isinstance(sde, DiscreteVPSDE):
            raise ValueError(f"time_input 'timestep' needs the SDE of a discrete chain ({SDE_NAME}), "
                             f"got {type(sde).__name__}")
        self.sde = sde
        self.unet = unet_from_config(unet) if isinstance(unet, dict) else unet

    def network_time(self, t: Tensor) -> Tensor:
        """The network's time input at scoresde time ``t``."""
        if self.time_input == "sigma":
            return self.sde.sigma(t)
        return t * ((self.sde.steps - 1) / self.sde.T)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.unet(x, self.network_time(t), class_labels=labels).sample
