"""``python -m studio``: the same as the ``studio`` command, for environments without its script."""

import sys

from studio.cli import main

sys.exit(main())
