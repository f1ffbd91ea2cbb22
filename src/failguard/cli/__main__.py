"""``python -m failguard.cli``: the ``failguard`` command."""

import sys

from . import main

sys.exit(main())
