"""Models trained elsewhere as scoresde networks, SDEs and runs: :mod:`.diffusers` (a diffusers
``UNet2DModel`` with its scheduler).  Submodules import their third-party package lazily."""
