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
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            break
        lines = chunk.split(b"\n")
        rest = lines.pop()  # after the last newline: the start of a line still coming
        if lines:
            if skipped >= 0:  # the newline that ends the line being dropped
                on_oversize(head, skipped + len(lines[0]))
                skipped = -1
                del lines[0]
            elif partial:
                partial += lines[0]
                lines[0] = bytes(partial)
                partial.clear()
            # Only a line joined with its earlier part can be longer than the chunk.
            if len(chunk) > max_bytes or (lines and len(lines[0]) > max_bytes):
                _bounded(lines, max_bytes, on_lines, on_oversize)
            elif lines:
                on_lines(lines)
        if skipped >= 0:
            skipped += len(rest)
        elif rest:
            partial += rest
            if len(partial) > max_bytes:
                head, skipped = bytes(partial[:HEAD]), len(partial)
                partial.clear()
    if skipped >= 0:
        on_oversize(head, skipped)
    elif partial:
        on_lines([bytes(partial)])


def _bounded(
    lines: List[bytes], max_bytes: int, on_lines: LinesHandler, on_oversize: OversizeHandler
) -> None:
    """Hand over a read's lines in order, each oversized one reported in its place."""
    kept: List[bytes] = []
    for line in lines:
        if len(line) <= max_bytes:
            kept.append(line)
            continue
        if kept:
            on_lines(kept)
            kept = []
        on_oversize(line[:HEAD], len(line))
    if kept:
        on_lines(kept)
