"""``python -m difflab`` (also what ``torchrun -m difflab`` runs)."""

import sys

from .cli import main

sys.exit(main())
