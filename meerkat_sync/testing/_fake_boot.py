"""Start the scripted runtime without importing the client: run as a script, not a module.

``python -m meerkat_sync.testing.fake_rkat`` first imports the packages ``meerkat_sync``
and ``meerkat_sync.testing``, that is the whole client (about three times the runtime's own
start-up cost), which the runtime never uses. Every test that starts a scripted runtime
paid for it. Run as a file, this stands bare package objects in for those two packages, so
only the runtime's own modules are loaded.
"""

from __future__ import annotations

import os
import sys
import types


def _bare_packages() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # this file's folder: its modules are reached through the package
    for name, path in (("meerkat_sync", os.path.dirname(here)), ("meerkat_sync.testing", here)):
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package


if __name__ == "__main__":
    _bare_packages()
    from meerkat_sync.testing.fake_rkat import main

    sys.exit(main())
