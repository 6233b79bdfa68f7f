"""``python -m methods.sparsedit finetune|check`` (see methods.sparsedit.finetune)."""

import sys

from methods.sparsedit.finetune import main

sys.exit(main())
