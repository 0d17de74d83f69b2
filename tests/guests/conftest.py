"""Makes `tests.guests.build` importable under a bare `pytest` run.

`python -m pytest` puts the repository root on sys.path, `pytest` does not; the lasting
fix is `pythonpath = .` in setup.cfg's [tool:pytest], after which this file can go.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
