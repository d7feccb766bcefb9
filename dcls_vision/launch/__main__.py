"""``python -m dcls_vision.launch experiment=... nodes=... gpus_per_node=... partition=... [overrides]``."""

import sys

from dcls_vision.launch.cli import main

sys.exit(main())
