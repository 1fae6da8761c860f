"""How to start the scripted runtime, importable without importing the runtime itself.

``python -m meerkat_sync.testing.fake_rkat`` warns (RuntimeWarning on stderr) when the
package ``__init__`` already imported ``fake_rkat``; importing the command from here
avoids that.
"""

from __future__ import annotations

import sys
from typing import List

MODULE = "meerkat_sync.testing.fake_rkat"


def fake_rkat_command(*args: str) -> List[str]:
    """The argv that starts the scripted runtime with this interpreter."""
    return [sys.executable, "-m", MODULE, *args]
