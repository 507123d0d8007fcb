"""scoresde: score-based generative modeling through stochastic differential equations.

The front door: SDEs, parameterizations and the Gaussian-mixture oracle, losses, samplers,
likelihoods, guidance, networks and the trainer. See DESIGN in the README for conventions.
"""

__version__ = "0.1.0"
