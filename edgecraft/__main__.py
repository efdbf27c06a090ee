"""``python -m edgecraft`` is the ``edgecraft`` command."""

import sys

from edgecraft.cli import main

sys.exit(main())
