"""The official score_sde configurations (``configs/`` of yang-song/score_sde_pytorch) as data.

Every config whose network is NCSN++ / DDPM++ (``models/ncsnpp.py``) or DDPM
(``models/ddpm.py``), by its path without ``.py``; each value holds the fields the importer reads,
in the official layout (``training``, ``sampling``, ``data``, ``model``), which is also the format
of ``scoresde import score-sde --config-json``. Values were read from the official files (the
defaults of ``default_*_configs.py`` with each file's changes); fields a config leaves unused (e.g.
``fourier_scale`` of a positional embedding, ``beta_*`` of a VE model) keep their base's value.
The NCSN / NCSNv2 configs (RefineNet networks) are not included, nor ``vp/ddpm/cifar10_unconditional``,
whose network the official code cannot build (``models/ddpm.py`` needs ``conditional=True``).
"""

from __future__ import annotations

_DDPMPP = {
    "name": "ncsnpp",
    "nf": 128,
    "ch_mult": (1, 2, 2, 2),
    "num_res_blocks": 4,
    "attn_resolutions": (16,),
    "dropout": 0.1,
    "resamp_with_conv": True,
    "conditional": True,
    "fir": False,
    "fir_kernel": (1, 3, 3, 1),
    "skip_rescale": True,
    "resblock_type": "biggan",
    "progressive": "none",
    "progressive_input": "none",
    "progressive_combine": "sum",
    "embedding_type": "positional",
    "init_scale": 0.0,
    "fourier_scale": 16,
    "scale_by_sigma": False,
    "sigma_min": 0.01,
    "sigma_max": 50,
    "num_scales": 1000,
    "beta_min": 0.1,
    "beta_max": 20.0,
    "nonlinearity": "swish",
    "normalization": "GroupNorm",
    "ema_rate": 0.9999,
}
_NCSNPP = {  # configs/ve/cifar10_ncsnpp_continuous.py: DDPM++ with FIR, Fourier, the input pyramid
    **_DDPMPP,
    "fir": True,
    "progressive_input": "residual",
    "embedding_type": "fourier",
    "scale_by_sigma": True,
    "ema_rate": 0.999,
}
_NCSNPP_256 = {  # configs/ve/celebahq_256_ncsnpp_continuous.py (also ffhq_256, church, bedroom)
    **_NCSNPP,
    "ch_mult": (1, 1, 2, 2, 2, 2, 2),
    "num_res_blocks": 2,
    "dropout": 0.0,
    "progressive": "output_skip",
    "progressive_input": "input_skip",
    "sigma_max": 348,
    "num_scales": 2000,
}
_DDPM = {
    "name": "ddpm",
    "nf": 128,
    "ch_mult": (1, 2, 2, 2),
    "num_res_blocks": 2,
    "attn_resolutions": (16,),
    "dropout": 0.1,
    "resamp_with_conv": True,
    "conditional": True,
    "embedding_type": "fourier",
    "scale_by_sigma": False,
    "sigma_min": 0.01,
    "sigma_max": 50,
    "num_scales": 1000,
    "beta_min": 0.1,
    "beta_max": 20.0,
    "nonlinearity": "swish",
    "normalization": "GroupNorm",
    "ema_rate": 0.9999,
}
_EULER_MARUYAMA = {
    "method": "pc",
    "predictor": "euler_maruyama",
    "corrector": "none",
    "snr": 0.16,
    "n_steps_each": 1,
    "noise_removal": True,
    "probability_flow": False,
}
_REVERSE_DIFFUSION_LANGEVIN = {
    "method": "pc",
    "predictor": "reverse_diffusion",
    "corrector": "langevin",
    "snr": 0.16,
    "n_steps_each": 1,
    "noise_removal": True,
    "probability_flow": False,
}
_CIFAR10 = {"dataset": "CIFAR10", "image_size": 32, "num_channels": 3, "centered": True}
_VP = {"sde": "vpsde", "continuous": True, "reduce_mean": True, "likelihood_weighting": False}
_VE = {"sde": "vesde", "continuous": True, "reduce_mean": False, "likelihood_weighting": False}
CONFIGS: dict[str, dict[str, dict]] = {
    "subvp/cifar10_ddpm_continuous": {
        "training": _VP | {"sde": "subvpsde"},
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPM,
    },
    "subvp/cifar10_ddpmpp_continuous": {
        "training": _VP | {"sde": "subvpsde"},
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPMPP,
    },
    "subvp/cifar10_ddpmpp_deep_continuous": {
        "training": _VP | {"sde": "subvpsde"},
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPMPP | {"num_res_blocks": 8},
    },
    "subvp/cifar10_ncsnpp_continuous": {
        "training": _VP | {"sde": "subvpsde"},
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPMPP | {"fir": True, "progressive_input": "residual"},
    },
    "subvp/cifar10_ncsnpp_deep_continuous": {
        "training": _VP | {"sde": "subvpsde"},
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPMPP | {"num_res_blocks": 8, "fir": True, "progressive_input": "residual"},
    },
    "ve/bedroom_ncsnpp_continuous": {
        "training": _VE,
        "sampling": _REVERSE_DIFFUSION_LANGEVIN | {"snr": 0.075},
        "data": _CIFAR10 | {"dataset": "LSUN", "image_size": 256, "centered": False},
        "model": _NCSNPP_256 | {"sigma_max": 378},
    },
    "ve/celeba_ncsnpp": {
        "training": _VE | {"continuous": False},
        "sampling": _REVERSE_DIFFUSION_LANGEVIN | {"snr": 0.17},
        "data": _CIFAR10 | {"dataset": "CELEBA", "image_size": 64, "centered": False},
        "model": _NCSNPP | {"embedding_type": "positional", "sigma_max": 90.0},
    },
    "ve/celebahq_256_ncsnpp_continuous": {
        "training": _VE,
        "sampling": _REVERSE_DIFFUSION_LANGEVIN | {"snr": 0.075},
        "data": _CIFAR10 | {"dataset": "CelebAHQ", "image_size": 256, "centered": False},
        "model": _NCSNPP_256,
    },
    "ve/celebahq_ncsnpp_continuous": {
        "training": _VE,
        "sampling": _REVERSE_DIFFUSION_LANGEVIN | {"snr": 0.15},
        "data": _CIFAR10 | {"dataset": "CelebAHQ", "image_size": 1024, "centered": False},
        "model": _NCSNPP_256
        | {
            "nf": 16,
            "ch_mult": (1, 2, 4, 8, 16, 32, 32, 32),
            "num_res_blocks": 1,
            "sigma_max": 1348,
            "ema_rate": 0.9999,
        },
    },
    "ve/church_ncsnpp_continuous": {
        "training": _VE,
        "sampling": _REVERSE_DIFFUSION_LANGEVIN | {"snr": 0.075},
        "data": _CIFAR10 | {"dataset": "LSUN", "image_size": 256, "centered": False},
        "model": _NCSNPP_256 | {"sigma_max": 380},
    },
    "ve/cifar10_ddpm": {
        "training": _VE | {"continuous": False},
        "sampling": _REVERSE_DIFFUSION_LANGEVIN,
        "data": _CIFAR10 | {"centered": False},
        "model": _DDPM | {"scale_by_sigma": True, "ema_rate": 0.999},
    },
    "ve/cifar10_ncsnpp": {
        "training": _VE | {"continuous": False},
        "sampling": _REVERSE_DIFFUSION_LANGEVIN,
        "data": _CIFAR10 | {"centered": False},
        "model": _NCSNPP | {"embedding_type": "positional"},
    },
    "ve/cifar10_ncsnpp_continuous": {
        "training": _VE,
        "sampling": _REVERSE_DIFFUSION_LANGEVIN,
        "data": _CIFAR10 | {"centered": False},
        "model": _NCSNPP,
    },
    "ve/cifar10_ncsnpp_deep_continuous": {
        "training": _VE,
        "sampling": _REVERSE_DIFFUSION_LANGEVIN,
        "data": _CIFAR10 | {"centered": False},
        "model": _NCSNPP | {"num_res_blocks": 8},
    },
    "ve/ffhq_256_ncsnpp_continuous": {
        "training": _VE,
        "sampling": _REVERSE_DIFFUSION_LANGEVIN | {"snr": 0.075},
        "data": _CIFAR10 | {"dataset": "FFHQ", "image_size": 256, "centered": False},
        "model": _NCSNPP_256,
    },
    "ve/ffhq_ncsnpp_continuous": {
        "training": _VP | {"sde": "vesde"},
        "sampling": _REVERSE_DIFFUSION_LANGEVIN | {"snr": 0.15},
        "data": _CIFAR10 | {"dataset": "FFHQ", "image_size": 1024, "centered": False},
        "model": _NCSNPP_256
        | {
            "nf": 16,
            "ch_mult": (1, 2, 4, 8, 16, 32, 32, 32),
            "num_res_blocks": 1,
            "sigma_max": 1348,
            "ema_rate": 0.9999,
        },
    },
    "vp/cifar10_ddpmpp": {
        "training": _VP | {"continuous": False},
        "sampling": _EULER_MARUYAMA | {"predictor": "ancestral_sampling"},
        "data": _CIFAR10,
        "model": _DDPMPP,
    },
    "vp/cifar10_ddpmpp_continuous": {
        "training": _VP,
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPMPP,
    },
    "vp/cifar10_ddpmpp_deep_continuous": {
        "training": _VP,
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPMPP | {"num_res_blocks": 8},
    },
    "vp/cifar10_ncsnpp": {
        "training": _VP | {"continuous": False},
        "sampling": _EULER_MARUYAMA | {"predictor": "reverse_diffusion"},
        "data": _CIFAR10,
        "model": _DDPMPP | {"fir": True, "progressive_input": "residual"},
    },
    "vp/cifar10_ncsnpp_continuous": {
        "training": _VP,
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPMPP | {"fir": True, "progressive_input": "residual"},
    },
    "vp/cifar10_ncsnpp_deep_continuous": {
        "training": _VP,
        "sampling": _EULER_MARUYAMA,
        "data": _CIFAR10,
        "model": _DDPMPP | {"num_res_blocks": 8, "fir": True, "progressive_input": "residual"},
    },
    "vp/ddpm/bedroom": {
        "training": _VP | {"continuous": False},
        "sampling": _EULER_MARUYAMA | {"predictor": "ancestral_sampling", "snr": 0.075},
        "data": _CIFAR10 | {"dataset": "LSUN", "image_size": 256},
        "model": _DDPM | {"ch_mult": (1, 1, 2, 2, 4, 4), "dropout": 0.0, "sigma_max": 378},
    },
    "vp/ddpm/celebahq": {
        "training": _VP | {"continuous": False},
        "sampling": _EULER_MARUYAMA | {"predictor": "ancestral_sampling", "snr": 0.075},
        "data": _CIFAR10 | {"dataset": "CelebAHQ", "image_size": 256},
        "model": _DDPM | {"ch_mult": (1, 1, 2, 2, 4, 4), "dropout": 0.0, "sigma_max": 378},
    },
    "vp/ddpm/church": {
        "training": _VP | {"continuous": False},
        "sampling": _EULER_MARUYAMA | {"predictor": "ancestral_sampling", "snr": 0.075},
        "data": _CIFAR10 | {"dataset": "LSUN", "image_size": 256},
        "model": _DDPM | {"ch_mult": (1, 1, 2, 2, 4, 4), "dropout": 0.0, "sigma_max": 378},
    },
    "vp/ddpm/cifar10": {
        "training": _VP | {"continuous": False},
        "sampling": _EULER_MARUYAMA | {"predictor": "ancestral_sampling"},
        "data": _CIFAR10,
        "model": _DDPM,
    },
    "vp/ddpm/cifar10_continuous": {"training": _VP, "sampling": _EULER_MARUYAMA, "data": _CIFAR10, "model": _DDPM},
}
