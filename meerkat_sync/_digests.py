"""SHA-256 digests of the rkat-rpc release archives, pinned inside this package.

A digest shipped in the package is trusted more than one fetched from the same server as the
archive: a compromised mirror can replace both the archive and ``checksums.sha256``, but not
this file. When no digest is pinned for a platform, the download falls back to the release's
``checksums.sha256`` fetched over HTTPS (see ``docs/binary-resolution.rst``).

No digest of the v0.5.0 release is known to this project yet (the release page could not be
read when this was written), so the table is empty and every platform uses the fallback.
Pin a platform by adding an entry, copying the values from the release's ``checksums.sha256``
and from ``sha256sum rkat-rpc`` of the extracted binary.
"""

from __future__ import annotations

from typing import Mapping, Optional

import attrs

__all__ = ["PINNED_DIGESTS", "RKAT_RPC_VERSION", "PinnedDigest", "pinned_digests"]

#: The rkat-rpc release this library speaks to (the wire contract version, PROTOCOL.md §2).
RKAT_RPC_VERSION = "0.5.0"


@attrs.frozen
class PinnedDigest:
    """Expected digests of one platform's release archive and of the binary inside it."""

    asset: str
    archive_sha256: str
    binary_sha256: Optional[str] = None


#: version -> target triple -> pinned digests.
PINNED_DIGESTS: Mapping[str, Mapping[str, PinnedDigest]] = {
    RKAT_RPC_VERSION: {},
}


def pinned_digests(version: str = RKAT_RPC_VERSION) -> Mapping[str, PinnedDigest]:
    """Return the digests pinned for ``version`` (empty when none are known)."""
    return PINNED_DIGESTS.get(version, {})
