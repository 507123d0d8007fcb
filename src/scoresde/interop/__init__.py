"""Models trained elsewhere as scoresde networks, SDEs and runs, and runs as files for others:

- :mod:`.score_sde`: official score_sde_pytorch checkpoints (``import_checkpoint``; the table of
  official configs in :mod:`.official_configs`), read weights-only;
- :mod:`.diffusers`: a diffusers ``UNet2DModel`` with its scheduler;
- :mod:`.export`: a run's EMA weights in one safetensors file with the config in its header.

Submodules import their third-party package lazily."""
