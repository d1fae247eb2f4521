"""Run the calling script again under the repository's .venv when autoexp is not importable.

The scripts start with `#!/usr/bin/env python3`, which runs the first python3 on PATH. This lets
`scripts/NAME.py` work without activating the virtual environment that `make setup` creates.
"""

import importlib.util
import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent.parent / ".venv"
VENV_PYTHON = VENV / "bin" / "python"

in_venv = Path(sys.prefix).resolve() == VENV.resolve()
missing = any(importlib.util.find_spec(name) is None for name in ("autoexp", "torch"))
if missing and VENV_PYTHON.is_file() and not in_venv:
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
