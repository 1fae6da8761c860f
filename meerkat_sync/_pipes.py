"""The sizes of the pipes to and from rkat-rpc (Linux; elsewhere the defaults stay).

rkat-rpc 0.5.0 reads its stdin 8 KiB at a time and loses the part of a request line it
has read whenever another of its tasks (an event to write, say) wins the wait between two
reads: the rest of the line then fails as a parse error with no id, and the request is
never run (docs/real-runtime.rst, "Lost requests"). A line is cut only where a read ends
inside it. So the stdin pipe is made exactly as large as one such read: whole lines of up
to ``PIPE_BUF`` bytes go in atomically, the pipe never holds more than the server takes in
one read, and such a line is never cut. Longer lines can still be (``size_pipes`` says
from what length on).

The stdout pipe is made large instead: when the reader falls behind (many busy runs), its
next read then takes it all, and each stream gets one larger batch instead of many small
ones (fewer wake-ups).
"""

from __future__ import annotations

import contextlib
import select
import sys

#: What rkat-rpc 0.5.0 reads of its stdin at once (tokio's BufReader default).
SERVER_READ = 8 * 1024
#: Capacity asked for the stdout pipe (Linux's default limit for unprivileged processes).
STDOUT_PIPE = 1024 * 1024
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, which Python 3.9's fcntl does not name
#: Lines longer than this may be cut by the server's reads; shorter ones only where the
#: stdin pipe could not be sized (not Linux).
ATOMIC = getattr(select, "PIPE_BUF", 512)


def _resize(fd: int, size: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    # A lower /proc/sys/fs/pipe-max-size refuses it: the default pipe works too.
    with contextlib.suppress(OSError):
        return fcntl.fcntl(fd, _F_SETPIPE_SZ, size) == size
    return False


def size_pipes(stdin_fd: int, stdout_fd: int) -> int:
    """Size both pipes; returns the length above which a request line may still be cut."""
    _resize(stdout_fd, STDOUT_PIPE)
    return ATOMIC if _resize(stdin_fd, SERVER_READ) else 0
