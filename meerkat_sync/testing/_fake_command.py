"""How to start the scripted runtime, importable without importing the runtime itself."""

from __future__ import annotations

import os
import sys
from typing import List

#: Run as a script, so starting the runtime does not import the client (see ``_fake_boot``).
BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fake_boot.py")


def fake_rkat_command(*args: str) -> List[str]:
    """The argv that starts the scripted runtime with this interpreter.

    The same runtime as ``python -m meerkat_sync.testing.fake_rkat``, started faster.
    """
    return [sys.executable, BOOT, *args]
