"""The child's stdout, read in large chunks and cut into lines of bounded size.

Large ``os.read`` calls mean few wake-ups per turn; splitting lines here (instead of a
buffered ``readline``) is what lets a line longer than ``max_bytes`` be discarded *while*
it is read, so junk on the wire can never grow memory past about twice the bound.
"""

from __future__ import annotations

import os
from typing import Callable

#: Default bound of one line (``MeerkatClient(max_message_bytes=)``): far above any real reply.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Bytes asked of each ``read``; it returns what is available, so this costs no latency.
CHUNK = 256 * 1024
#: Bytes of an oversized line kept to tell what it was (a response's id is near the start).
HEAD = 256

LineHandler = Callable[[bytes], None]
OversizeHandler = Callable[[bytes, int], None]


def read_lines(fd: int, max_bytes: int, on_line: LineHandler, on_oversize: OversizeHandler) -> None:
    """Call ``on_line`` for every line of ``fd`` until EOF; ``on_oversize(head, size)`` for
    each line longer than ``max_bytes``, whose bytes are dropped as they arrive."""
    partial = bytearray()
    head = b""
    skipped = -1  # bytes of the oversized line being dropped; -1 when not dropping
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            break
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if skipped >= 0:
                on_oversize(head, skipped + end - start)
                skipped = -1
            elif partial:
                partial += chunk[start:end]
                line = bytes(partial)
                partial.clear()
                if len(line) > max_bytes:
                    on_oversize(line[:HEAD], len(line))
                else:
                    on_line(line)
            elif end - start > max_bytes:
                on_oversize(chunk[start : start + HEAD], end - start)
            else:
                on_line(chunk[start:end])
            start = end + 1
        if skipped >= 0:
            skipped += len(chunk) - start
        elif start < len(chunk):
            partial += chunk[start:]
            if len(partial) > max_bytes:
                head, skipped = bytes(partial[:HEAD]), len(partial)
                partial.clear()
    if skipped >= 0:
        on_oversize(head, skipped)
    elif partial:
        on_line(bytes(partial))
