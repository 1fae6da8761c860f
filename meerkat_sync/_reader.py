"""The child's stdout, read in large chunks and cut into lines of bounded size.

Large ``os.read`` calls mean few wake-ups per turn; splitting lines here (instead of a
buffered ``readline``) is what lets a line longer than ``max_bytes`` be discarded *while*
it is read, so junk on the wire can never grow memory past about twice the bound.
"""

from __future__ import annotations

import os
from typing import Callable, List

#: Default bound of one line (``MeerkatClient(max_message_bytes=)``): far above any real reply.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Bytes asked of each ``read``; it returns what is available, so this costs no latency.
CHUNK = 256 * 1024
#: Bytes of an oversized line kept to tell what it was (a response's id is near the start).
HEAD = 256

LinesHandler = Callable[[List[bytes]], None]
OversizeHandler = Callable[[bytes, int], None]


def read_lines(fd: int, max_bytes: int, on_lines: LinesHandler, on_oversize: OversizeHandler) -> None:
    """Call ``on_lines`` with the complete lines of each read until EOF (one call per read,
    so whoever handles them can hand their results over once); ``on_oversize(head, size)``
    for each line longer than ``max_bytes``, whose bytes are dropped as they arrive."""
    partial = bytearray()
    head = b""
    skipped = -1  # bytes of the oversized line being dropped; -1 when not dropping
    lines: List[bytes] = []
    on_line = lines.append

    def oversize(head: bytes, size: int) -> None:
        if lines:  # keep the order: the lines before it are handled first
            on_lines(lines[:])
            lines.clear()
        on_oversize(head, size)

    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            break
        pieces = chunk.split(b"\n")
        rest = pieces.pop()  # after the last newline: the start of a line still coming
        for piece in pieces:
            if skipped >= 0:
                oversize(head, skipped + len(piece))
                skipped = -1
                continue
            if partial:
                partial += piece
                piece = bytes(partial)
                partial.clear()
            if len(piece) > max_bytes:
                oversize(piece[:HEAD], len(piece))
            else:
                on_line(piece)
        if skipped >= 0:
            skipped += len(rest)
        elif rest:
            partial += rest
            if len(partial) > max_bytes:
                head, skipped = bytes(partial[:HEAD]), len(partial)
                partial.clear()
        if lines:
            on_lines(lines[:])
            lines.clear()
    if skipped >= 0:
        on_oversize(head, skipped)
    elif partial:
        on_lines([bytes(partial)])
