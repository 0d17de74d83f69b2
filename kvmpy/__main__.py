"""``python -m kvmpy``: the same as the ``kvmpy`` command."""

import sys

from kvmpy.cli import main

sys.exit(main())
