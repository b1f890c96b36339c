"""On the PYTHONPATH of the subprocesses tests start (tests/conftest.py): lets torchvision
import beside the CPU torch there too (tests/reference_imports.py says why). Costs nothing
until something imports torchvision."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference_imports  # noqa: E402

reference_imports.install_torchvision_finder()
sys.path.pop(0)
