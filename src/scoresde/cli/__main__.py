"""``python -m scoresde.cli`` (what ``torchrun ... -m scoresde.cli train ...`` runs)."""

import sys

from .main import main

sys.exit(main())
