"""scoresde: score-based generative modeling through stochastic differential equations.

The front door: SDEs, parameterizations and the Gaussian-mixture oracle, losses, samplers,
likelihoods, guidance, networks and the trainer.  Conventions: ``../DESIGN`` in the README.
"""

from .ema import EMA
from .guidance import (
    AveragePool,
    CircularBlur,
    ConditionalInfo,
    Grayscale,
    LinearOperator,
    Mask,
    cfg_score,
    cfg_score_from_model,
    classifier_guided_score,
    colorize,
    inpaint,
    reconstruction_guided_score,
    solve_inverse_problem,
)
from .interop.diffusers import from_diffusers
from .likelihood import BPDResult, LikelihoodInfo, bits_per_dim, evaluate_bpd, log_likelihood
from .losses import (
    DDPMLoss,
    DSMLoss,
    FlowMatchingLoss,
    LabelDropout,
    NoisyClassifierLoss,
    SlicedScoreMatchingLoss,
    SMLDLoss,
    loss_from_name,
)
from .nets import MLP, MLPClassifier, NCSNpp, UNetClassifier, build_preset
from .reflow import Couplings, ReflowLoss, draw_couplings, euler_flow, straightness, velocity_fn_from_score
from .runs import Run, load_run
from .sampling import SampleInfo, decode, encode, sample, slerp
from .mixture import GaussianMixture
from .score import Parameterization, ScoreFn, score_fn_from_model
from .sde import SDE, CosineVPSDE, LinearSDE, RectifiedFlow, SubVPSDE, VESDE, VPSDE, sde_from_name
from .train import Trainer

__version__ = "0.1.0"
