"""The fault-injection rig (tests/faults/conftest.py) serves the disk buffer's tests too."""

from tests.faults.conftest import rig as rig  # the fixture, re-exported

__all__ = ["rig"]
