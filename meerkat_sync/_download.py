"""Downloading, verifying and unpacking the rkat-rpc release archive.

Everything here runs with the cache lock held (see ``_binary.py``) and writes only inside the
cache entry's directory, through temporary files that are renamed into place once verified.
Nothing is ever executed: a binary is only handed out after its archive matched a trusted
SHA-256 digest and the binary itself was hashed and recorded.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import platform
import posixpath
import queue
import socket
import stat
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Protocol,
    Tuple,
    Union,
    cast,
)
from urllib.parse import urljoin, urlsplit

import attrs

from ._deadline import Deadline
from ._digests import RKAT_RPC_VERSION, PinnedDigest, pinned_digests
from .errors import MeerkatError

if TYPE_CHECKING:  # requests costs ~140 ms to import: only a download pays for it
    import requests

__all__ = [
    "DEFAULT_BASE_URL",
    "DownloadSettings",
    "InstallRecord",
    "Target",
    "deadline_error",
    "download_and_install",
    "platform_target",
    "release_urls",
]

logger = logging.getLogger("meerkat_sync")

#: Where GitHub serves release assets: ``<base>/v<version>/<asset>``.
DEFAULT_BASE_URL = "https://github.com/lukacf/meerkat/releases/download"
DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_LOCK_TIMEOUT = 600.0
#: The whole download: waiting for the cache lock, both fetches, unpacking and installing.
DEFAULT_DOWNLOAD_DEADLINE = 300.0
DEFAULT_MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_BINARY_BYTES = 512 * 1024 * 1024
#: All the bytes unpacking may decompress: the binary's cap plus room for small extras.
DEFAULT_MAX_UNPACKED_BYTES = DEFAULT_MAX_BINARY_BYTES + 64 * 1024 * 1024
MAX_CHECKSUMS_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
MAX_ARCHIVE_MEMBERS = 10_000
CHUNK_BYTES = 64 * 1024
#: How much is decompressed at a time to skip an archive member that is not the binary.
SKIP_BYTES = 128 * 1024
#: Received chunks waiting to be written: bounds the memory a download can take.
QUEUED_CHUNKS = 16
PROGRESS_MIN_BYTES = 2 * 1024 * 1024
TEMP_PREFIX = ".rkat-rpc-tmp-"
MANIFEST_NAME = "rkat-rpc.manifest.json"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@attrs.frozen
class Target:
    """One platform of the release: its Rust target triple and archive format."""

    triple: str
    ext: str
    binary_name: str


_LINUX_ARCH = {
    "x86_64": "x86_64-unknown-linux-gnu",
    "amd64": "x86_64-unknown-linux-gnu",
    "aarch64": "aarch64-unknown-linux-gnu",
    "arm64": "aarch64-unknown-linux-gnu",
}
_MACOS_ARCH = {
    "arm64": "aarch64-apple-darwin",
    "aarch64": "aarch64-apple-darwin",
    "x86_64": "x86_64-apple-darwin",
    "amd64": "x86_64-apple-darwin",
}
_WINDOWS_ARCH = {"amd64": "x86_64-pc-windows-msvc", "x86_64": "x86_64-pc-windows-msvc"}

SUPPORTED_PLATFORMS = (
    "Linux x86_64 (glibc)",
    "Linux aarch64 (glibc)",
    "macOS arm64",
    "macOS x86_64",
    "Windows x86_64",
)


def _linux_is_musl() -> bool:
    """True on a musl system (Alpine): the release only publishes glibc builds."""
    if platform.libc_ver()[0] == "glibc":
        return False
    try:
        return any(name.startswith("ld-musl-") for name in os.listdir("/lib"))
    except OSError:
        return False


def platform_target(
    system: Optional[str] = None, machine: Optional[str] = None, *, musl: Optional[bool] = None
) -> Target:
    """Map an OS and CPU to the release target, or raise ``UNSUPPORTED_PLATFORM``."""
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    arch = machine.lower()
    triple: Optional[str] = None
    ext, binary = "tar.gz", "rkat-rpc"
    if system == "Linux":
        triple = _LINUX_ARCH.get(arch)
        if triple is not None and (_linux_is_musl() if musl is None else musl):
            raise MeerkatError(
                "UNSUPPORTED_PLATFORM",
                f"the rkat-rpc {RKAT_RPC_VERSION} release only has glibc builds for Linux and this "
                "system uses musl (Alpine?); build rkat-rpc from source and set MEERKAT_BIN_PATH, "
                "or use a glibc-based image",
                {"system": system, "machine": machine, "libc": "musl",
                 "supported": list(SUPPORTED_PLATFORMS)},
            )
    elif system == "Darwin":
        triple = _MACOS_ARCH.get(arch)
    elif system == "Windows":
        triple = _WINDOWS_ARCH.get(arch)
        ext, binary = "zip", "rkat-rpc.exe"
    if triple is None:
        raise MeerkatError(
            "UNSUPPORTED_PLATFORM",
            f"no prebuilt rkat-rpc {RKAT_RPC_VERSION} is published for {system} {machine} "
            f"(there are builds for: {', '.join(SUPPORTED_PLATFORMS)}); build rkat-rpc from "
            "source and set MEERKAT_BIN_PATH to it, or put it on PATH",
            {"system": system, "machine": machine, "supported": list(SUPPORTED_PLATFORMS)},
        )
    return Target(triple, ext, binary)


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise MeerkatError(
        "BINARY_CONFIG_INVALID",
        f"{name}={environ[name]!r} is not a yes/no value; set it to 1 or 0",
        {"variable": name, "value": environ[name]},
    )


def _env_seconds(environ: Mapping[str, str], name: str) -> Optional[float]:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise MeerkatError(
            "BINARY_CONFIG_INVALID",
            f"{name}={raw!r} is not a positive number of seconds; fix or unset it",
            {"variable": name, "value": raw},
        )
    return value


def default_cache_root(environ: Mapping[str, str], system: Optional[str] = None) -> str:
    """The per-user cache directory for this library, following each OS's convention."""
    system = platform.system() if system is None else system
    home = environ.get("HOME") or environ.get("USERPROFILE") or os.path.expanduser("~")
    if system == "Windows":
        base = environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return os.path.join(base, "meerkat-sync", "Cache")
    if system == "Darwin":
        return os.path.join(home, "Library", "Caches", "meerkat-sync")
    xdg = environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(home, ".cache")
    return os.path.join(base, "meerkat-sync")


@attrs.frozen
class DownloadSettings:
    """Everything the cache and download steps depend on, read once from the environment.

    Tests build one directly to shorten timeouts, lower the size caps or trust a throwaway
    certificate; users set the ``MEERKAT_*`` variables instead (see :meth:`from_environ`).
    """

    cache_root: str
    base_url: str = DEFAULT_BASE_URL
    no_download: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    #: Seconds the whole download may take; None: no overall limit, only per-read timeouts.
    download_deadline: Optional[float] = DEFAULT_DOWNLOAD_DEADLINE
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
    max_binary_bytes: int = DEFAULT_MAX_BINARY_BYTES
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
    #: ``requests``' ``verify``: True (system CAs, or ``REQUESTS_CA_BUNDLE``) or a CA bundle path.
    verify: Union[bool, str] = True
    #: None: the digests shipped in ``_digests.py``.
    pinned: Optional[Mapping[str, PinnedDigest]] = None
    version: str = RKAT_RPC_VERSION
    system: Optional[str] = None
    machine: Optional[str] = None
    musl: Optional[bool] = None
    #: Where progress goes; None means ``sys.stderr``. Shown only when it is a terminal.
    progress_stream: Optional[IO[str]] = attrs.field(default=None, eq=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: Any) -> DownloadSettings:
        """Read ``MEERKAT_CACHE_DIR``, ``MEERKAT_DOWNLOAD_BASE_URL``, ``MEERKAT_NO_DOWNLOAD``,
        ``MEERKAT_DOWNLOAD_TIMEOUT``, ``MEERKAT_DOWNLOAD_DEADLINE`` and ``MEERKAT_LOCK_TIMEOUT``."""
        values: Dict[str, Any] = {}
        cache_dir = environ.get("MEERKAT_CACHE_DIR", "").strip()
        system = overrides.get("system")
        values["cache_root"] = (
            os.path.abspath(os.path.expanduser(cache_dir))
            if cache_dir
            else default_cache_root(environ, system)
        )
        base = environ.get("MEERKAT_DOWNLOAD_BASE_URL", "").strip()
        if base:
            values["base_url"] = base
        values["no_download"] = _env_flag(environ, "MEERKAT_NO_DOWNLOAD")
        timeout = _env_seconds(environ, "MEERKAT_DOWNLOAD_TIMEOUT")
        if timeout is not None:
            values["connect_timeout"] = values["read_timeout"] = timeout
        for variable, field in (("MEERKAT_DOWNLOAD_DEADLINE", "download_deadline"),
                                ("MEERKAT_LOCK_TIMEOUT", "lock_timeout")):
            seconds = _env_seconds(environ, variable)
            if seconds is not None:
                values[field] = seconds
        values.update(overrides)
        return cls(**values)

    def pinned_for(self, triple: str) -> Optional[PinnedDigest]:
        table = pinned_digests(self.version) if self.pinned is None else self.pinned
        return table.get(triple)


@attrs.frozen
class ReleaseUrls:
    asset: str
    archive_url: str
    checksums_url: str


def release_urls(settings: DownloadSettings, target: Target) -> ReleaseUrls:
    """The asset name and URLs the v<version> release publishes (PROTOCOL.md §9.3)."""
    asset = f"rkat-rpc-{settings.version}-{target.triple}.{target.ext}"
    release = f"{settings.base_url.rstrip('/')}/v{settings.version}/"
    return ReleaseUrls(asset, release + asset, release + "checksums.sha256")


def check_https(url: str, variable: str = "MEERKAT_DOWNLOAD_BASE_URL") -> None:
    """Refuse any base URL that is not HTTPS: a digest fetched in clear text proves nothing."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise MeerkatError(
            "BINARY_CONFIG_INVALID",
            f"{variable}={url!r} is not an https:// URL; rkat-rpc is only downloaded over HTTPS. "
            f"Point {variable} at an HTTPS mirror, or install rkat-rpc yourself and set "
            "MEERKAT_BIN_PATH",
            {"variable": variable, "url": url},
        )


@attrs.frozen
class InstallRecord:
    """What was installed, kept beside the binary so the cache can be re-verified later."""

    version: str
    target: str
    asset: str
    url: str
    archive_sha256: str
    binary_sha256: str
    digest_source: str

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InstallRecord:
        data = json.loads(text)
        fields = [f.name for f in attrs.fields(cls)]
        if not isinstance(data, dict) or not all(isinstance(data.get(f), str) for f in fields):
            raise ValueError("manifest does not have the expected fields")
        return cls(**{f: data[f] for f in fields})


# --------------------------------------------------------------------------- HTTP


def _failed(url: str, cause: str, reason: str, advice: str = "", **extra: Any) -> MeerkatError:
    message = f"could not download {url}: {cause}"
    if advice:
        message += f"; {advice}"
    details: Dict[str, Any] = {"url": url, "reason": reason, "cause": cause}
    details.update(extra)
    return MeerkatError("BINARY_DOWNLOAD_FAILED", message, details)


_FALLBACK_ADVICE = (
    "or install rkat-rpc yourself and set MEERKAT_BIN_PATH (or put it on PATH)"
)


def deadline_error(deadline: Deadline, url: str, stage: str) -> MeerkatError:
    """The whole download ran out of time; ``stage`` says what it was doing."""
    return _failed(
        url,
        f"the download did not finish within {deadline.timeout:g} s (it was {stage}); nothing "
        "was installed",
        "deadline",
        "retry on a faster connection, raise MEERKAT_DOWNLOAD_DEADLINE (or pass a larger "
        "timeout=), use a closer mirror via MEERKAT_DOWNLOAD_BASE_URL, " + _FALLBACK_ADVICE,
        timeout=deadline.timeout,
        stage=stage,
    )


def _check_deadline(deadline: Deadline, url: str, stage: str) -> None:
    if deadline.expired():
        raise deadline_error(deadline, url, stage)


def _request_error(url: str, exc: requests.RequestException) -> MeerkatError:
    import requests
    cause = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, requests.exceptions.SSLError):
        return _failed(
            url, cause, "tls",
            "if a corporate proxy re-signs HTTPS, point REQUESTS_CA_BUNDLE at its CA bundle, "
            + _FALLBACK_ADVICE,
        )
    if isinstance(exc, requests.exceptions.ProxyError):
        return _failed(url, cause, "proxy", "check HTTPS_PROXY / NO_PROXY, " + _FALLBACK_ADVICE)
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc).lower():
        return _failed(
            url, cause, "timeout",
            "the server stopped sending; retry, raise MEERKAT_DOWNLOAD_TIMEOUT, use a mirror via "
            "MEERKAT_DOWNLOAD_BASE_URL, " + _FALLBACK_ADVICE,
        )
    return _failed(
        url, cause, "network",
        "check the network and proxy settings (HTTPS_PROXY), use a mirror via "
        "MEERKAT_DOWNLOAD_BASE_URL, " + _FALLBACK_ADVICE,
    )


def _capped(seconds: float, deadline: Deadline) -> float:
    """A per-connect or per-read timeout, never longer than the time left (and positive)."""
    left = deadline.remaining()
    return seconds if left is None else max(0.01, min(seconds, left))


def _open(
    session: requests.Session, url: str, settings: DownloadSettings, deadline: Deadline
) -> requests.Response:
    """GET ``url``, following at most MAX_REDIRECTS redirects and only to HTTPS."""
    import requests
    first = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = session.get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(_capped(settings.connect_timeout, deadline),
                         _capped(settings.read_timeout, deadline)),
                verify=settings.verify,
                headers={
                    "Accept-Encoding": "identity",
                    "User-Agent": f"meerkat-sync (rkat-rpc {settings.version})",
                },
            )
        except requests.RequestException as exc:
            raise _request_error(url, exc) from exc
        if not response.is_redirect:
            return response
        location = response.headers.get("location", "")
        response.close()
        target = urljoin(url, location)
        if urlsplit(target).scheme != "https":
            raise _failed(
                first,
                f"the server redirected to {target!r}, which is not HTTPS",
                "insecure_redirect",
                "fix the mirror so it redirects to HTTPS, " + _FALLBACK_ADVICE,
                redirect=target,
            )
        logger.debug("following redirect %s -> %s", url, target)
        url = target
    raise _failed(first, f"more than {MAX_REDIRECTS} redirects", "redirects", _FALLBACK_ADVICE)


class _Progress:
    """A one-line progress display on a terminal; silent everywhere else."""

    def __init__(self, stream: Optional[IO[str]], label: str, total: Optional[int]) -> None:
        stream = sys.stderr if stream is None else stream
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        big = total is None or total >= PROGRESS_MIN_BYTES
        self._stream = stream if tty and big else None
        self._label = label
        self._total = total
        self._last = 0.0
        self._shown = False

    def update(self, done: int, *, final: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        mib = done / (1024 * 1024)
        if self._total:
            text = f"{mib:.1f}/{self._total / (1024 * 1024):.1f} MiB {100 * done // self._total}%"
        else:
            text = f"{mib:.1f} MiB"
        try:
            self._stream.write(f"\r{self._label}: {text}")
            if final:
                self._stream.write("\n")
            self._stream.flush()
        except (OSError, ValueError):
            self._stream = None
        self._shown = True

    def close(self, done: int) -> None:
        if self._shown:
            self.update(done, final=True)


_END = object()


def _shut_down(response: requests.Response) -> None:
    """Wake a read blocked on the response's socket; it then fails or sees the end.

    ``socket.socket.shutdown`` rather than ``SSLSocket.shutdown``, which would also drop the
    TLS state the reading thread is still using.
    """
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Transfer:
    """One streamed GET whose blocking network reads run on a helper thread.

    Socket timeouts count per read, so a server that trickles a byte a second never trips
    them. The caller therefore only ever waits on a queue, never past the deadline; when it
    stops early (deadline, error, enough read) the socket is shut down and the helper ends
    at once. A helper still inside the response headers ends when they do or when its read
    timeout fires; it holds no file and no lock, and the caller is not waiting for it.
    """

    response: requests.Response  # set once the headers have arrived

    def __init__(self, session: requests.Session, url: str, settings: DownloadSettings,
                 deadline: Deadline, stage: str) -> None:
        self.url = url
        self._deadline = deadline
        self._stage = stage
        self._items: queue.Queue[object] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._stopped = threading.Event()
        self._finished = False
        self._response: Optional[requests.Response] = None
        self._thread = threading.Thread(target=self._fetch, args=(session, settings),
                                        name="meerkat-sync download", daemon=True)

    def __enter__(self) -> _Transfer:
        self._thread.start()
        try:
            self.response = cast("requests.Response", self._next())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def chunks(self) -> Iterator[bytes]:
        while True:
            item = self._next()
            if item is _END:
                return
            yield cast(bytes, item)

    def close(self) -> None:
        if self._finished:  # the helper has handed over its last item and is returning
            self._thread.join()
            return
        self._stopped.set()
        if self._response is not None:
            _shut_down(self._response)
        with contextlib.suppress(queue.Empty):  # frees a helper blocked on a full queue
            while True:
                self._items.get_nowait()

    def _next(self) -> object:
        while True:
            try:
                item = self._items.get(timeout=self._deadline.slice())
                break
            except queue.Empty:
                if self._deadline.expired():
                    raise deadline_error(self._deadline, self.url, self._stage) from None
        self._finished = item is _END or isinstance(item, BaseException)
        if isinstance(item, BaseException):
            if self._deadline.expired():  # a read timeout cut short to the time left
                raise deadline_error(self._deadline, self.url, self._stage) from item
            raise item
        return item

    def _fetch(self, session: requests.Session, settings: DownloadSettings) -> None:
        try:
            with _open(session, self.url, settings, self._deadline) as response:
                self._response = response
                if not self._offer(response):
                    return
                for chunk in response.iter_content(CHUNK_BYTES):
                    if not self._offer(chunk):
                        return
            self._offer(_END)
        except BaseException as exc:  # raised again on the caller's thread
            self._offer(exc)

    def _offer(self, item: object) -> bool:
        """Queue ``item`` unless the caller has stopped; False: stop fetching."""
        if self._stopped.is_set():
            return False
        self._items.put(item)
        return not self._stopped.is_set()


def _stream_body(
    transfer: _Transfer,
    limit: int,
    sink: Callable[[bytes], None],
    progress: Optional[_Progress] = None,
) -> int:
    """Copy the body into ``sink``; refuse a body over ``limit`` or shorter than declared."""
    import requests
    url = transfer.url
    declared: Optional[int] = None
    raw = transfer.response.headers.get("content-length")
    if raw is not None:
        try:
            declared = int(raw)
        except ValueError:
            declared = None
    if declared is not None and declared > limit:
        raise MeerkatError(
            "BINARY_DOWNLOAD_TOO_LARGE",
            f"{url} declares {declared} bytes, more than the {limit}-byte limit; the server or "
            "mirror is not serving the rkat-rpc release (check MEERKAT_DOWNLOAD_BASE_URL), "
            + _FALLBACK_ADVICE,
            {"url": url, "limit": limit, "declared": declared},
        )
    done = 0
    try:
        for chunk in transfer.chunks():
            done += len(chunk)
            if done > limit:
                raise MeerkatError(
                    "BINARY_DOWNLOAD_TOO_LARGE",
                    f"{url} sent more than the {limit}-byte limit; the server or mirror is not "
                    "serving the rkat-rpc release (check MEERKAT_DOWNLOAD_BASE_URL), "
                    + _FALLBACK_ADVICE,
                    {"url": url, "limit": limit, "declared": declared},
                )
            sink(chunk)
            if progress is not None:
                progress.update(done)
    except requests.RequestException as exc:
        raise _request_error(url, exc) from exc
    if declared is not None and done != declared:
        raise _failed(
            url, f"the body ended after {done} of {declared} bytes", "truncated",
            "retry, " + _FALLBACK_ADVICE, received=done, declared=declared,
        )
    if progress is not None:
        progress.close(done)
    return done


def _check_status(response: requests.Response, url: str) -> None:
    if response.status_code != 200:
        raise _failed(
            url,
            f"HTTP {response.status_code} {response.reason}",
            "http_status",
            "check that MEERKAT_DOWNLOAD_BASE_URL (if set) mirrors the GitHub release layout "
            "<base>/v<version>/<asset>, " + _FALLBACK_ADVICE,
            status=response.status_code,
        )


# --------------------------------------------------------------------------- digests


def parse_checksums(text: str) -> Dict[str, List[str]]:
    """Map each file's base name to the digests listed for it in ``sha256sum`` output.

    The release's lines carry a per-job directory prefix (``./<dir>/<asset>``, PROTOCOL.md
    §9.3), so only the base name is meaningful.
    """
    found: Dict[str, List[str]] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            continue
        digest, name = parts[0].lower(), parts[1].strip()
        if name.startswith("*"):
            name = name[1:]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            continue
        base = posixpath.basename(name.replace("\\", "/"))
        found.setdefault(base, []).append(digest)
    return found


def _expected_archive_digest(
    session: requests.Session, settings: DownloadSettings, target: Target, urls: ReleaseUrls,
    deadline: Deadline,
) -> Tuple[str, str, Optional[str]]:
    """Return (archive sha256, where it came from, pinned binary sha256 or None)."""
    pin = settings.pinned_for(target.triple)
    if pin is not None:
        if pin.asset != urls.asset:
            raise MeerkatError(
                "BINARY_DIGEST_UNAVAILABLE",
                f"the digest pinned for {target.triple} is for {pin.asset!r}, not {urls.asset!r}; "
                "this meerkat-sync build is inconsistent - reinstall it, or install rkat-rpc "
                "yourself and set MEERKAT_BIN_PATH",
                {"asset": urls.asset, "pinned_asset": pin.asset, "url": urls.archive_url},
            )
        return pin.archive_sha256.lower(), "pinned", pin.binary_sha256
    url = urls.checksums_url
    with _Transfer(session, url, settings, deadline, "fetching the checksums") as transfer:
        response = transfer.response
        if response.status_code in (404, 410):
            raise MeerkatError(
                "BINARY_DIGEST_UNAVAILABLE",
                f"no digest is pinned for {target.triple} and the release has no checksums file "
                f"at {url} (HTTP {response.status_code}), so {urls.asset} cannot be verified and "
                "will not be installed; install rkat-rpc yourself and set MEERKAT_BIN_PATH",
                {"url": url, "asset": urls.asset, "status": response.status_code},
            )
        _check_status(response, url)
        body = bytearray()
        _stream_body(transfer, MAX_CHECKSUMS_BYTES, body.extend)
    text = bytes(body).decode("utf-8", errors="replace")
    digests = set(parse_checksums(text).get(urls.asset, []))
    if len(digests) != 1:
        problem = "has no entry for" if not digests else "lists conflicting digests for"
        raise MeerkatError(
            "BINARY_DIGEST_UNAVAILABLE",
            f"{url} {problem} {urls.asset}, so the archive cannot be verified and will not be "
            "installed; check that MEERKAT_DOWNLOAD_BASE_URL (if set) mirrors the whole release, "
            "or install rkat-rpc yourself and set MEERKAT_BIN_PATH",
            {"url": url, "asset": urls.asset, "found": sorted(digests)},
        )
    return digests.pop(), url, None


# --------------------------------------------------------------------------- archives


def _archive_invalid(asset: str, problem: str, **extra: Any) -> MeerkatError:
    details: Dict[str, Any] = {"asset": asset, "problem": problem}
    details.update(extra)
    return MeerkatError(
        "BINARY_ARCHIVE_INVALID",
        f"{asset} matched its digest but does not have the expected layout ({problem}); nothing "
        "was installed. Report this to the Meerkat maintainers; meanwhile install rkat-rpc "
        "yourself and set MEERKAT_BIN_PATH",
        details,
    )


def _member_name(asset: str, name: str) -> str:
    """Normalise a member name, refusing absolute paths and ``..`` anywhere."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _archive_invalid(asset, f"member {name!r} has an absolute or Windows path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _archive_invalid(asset, f"member {name!r} points outside the archive")
    return "/".join(parts)


class _Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Unpacked(io.BufferedIOBase):
    """Decompressed archive data, read front to back and cut off past a byte budget.

    Reaching a later tar member means decompressing every byte before it, so a huge member
    that compresses to almost nothing would otherwise cost seconds of CPU under the lock.
    Headers say how far each member's data runs: :meth:`require` refuses it before any of
    it is decompressed, and the budget on reads bounds what headers do not show (long
    names, pax records). tarfile seeks over the members it skips: here that decompresses
    in large steps and counts like any read. ``check`` (the deadline) runs before each read.
    """

    def __init__(self, source: _Reader, budget: int, asset: str, check: Callable[[], None]):
        super().__init__()
        self._source = source
        self._budget = budget
        self._position = 0
        self._asset = asset
        self._check = check

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if whence != io.SEEK_SET or offset < self._position:
            raise io.UnsupportedOperation("archive data can only be read front to back")
        while self._position < offset and self.read(min(SKIP_BYTES, offset - self._position)):
            pass
        return self._position

    def read(self, size: Optional[int] = -1, /) -> bytes:
        self._check()
        left = self._budget - self._position
        data = self._source.read(left + 1 if size is None or size < 0 else min(size, left + 1))
        self._position += len(data)
        self.require(self._position, "the archive")
        return data

    def require(self, end: int, what: str) -> None:
        """Refuse the archive if ``what`` runs to offset ``end``, past the budget."""
        if end > self._budget:
            raise _archive_invalid(
                self._asset, f"{what} unpacks past the {self._budget}-byte limit on unpacked data",
                max_unpacked_bytes=self._budget,
            )


def _copy_bounded(
    source: _Reader, out: IO[bytes], limit: int, asset: str
) -> Tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = source.read(CHUNK_BYTES)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise _archive_invalid(asset, f"the binary is larger than {limit} bytes")
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest(), size


def extract_binary(
    archive_path: str, target: Target, asset: str, out: IO[bytes], limit: int,
    budget: int, check: Callable[[], None],
) -> Tuple[str, int]:
    """Copy the one expected member into ``out``; return its (sha256, size).

    Every member is checked: a link, device, absolute path or ``..`` anywhere rejects the
    whole archive, and nothing is written from a path taken from the archive. The binary is
    at most ``limit`` bytes; at most ``budget`` bytes are decompressed in all, and ``check``
    (the deadline) runs before each read.
    """
    name = target.binary_name

    def unpacked(source: _Reader) -> _Unpacked:
        return _Unpacked(source, budget, asset, check)

    try:
        if target.ext == "zip":
            return _extract_zip(archive_path, name, asset, out, limit, unpacked)
        return _extract_tar(archive_path, name, asset, out, limit, unpacked)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O error (disk full...), not a malformed archive
        raise _archive_invalid(asset, f"unreadable archive: {exc}") from exc


def _extract_tar(
    path: str, name: str, asset: str, out: IO[bytes], limit: int,
    unpacked: Callable[[_Reader], _Unpacked],
) -> Tuple[str, int]:
    """One pass over the stream: the binary is copied out when reached, never re-read."""
    with gzip.open(path, "rb") as raw, unpacked(raw) as data, \
            tarfile.open(fileobj=data, mode="r:") as tar:
        copied: Optional[Tuple[str, int]] = None
        for count, member in enumerate(tar, 1):
            if count > MAX_ARCHIVE_MEMBERS:
                raise _archive_invalid(asset, f"more than {MAX_ARCHIVE_MEMBERS} members")
            data.require(member.offset_data + member.size, f"member {member.name!r}")
            clean = _member_name(asset, member.name)
            if member.issym() or member.islnk():
                raise _archive_invalid(
                    asset, f"member {member.name!r} is a link to {member.linkname!r}"
                )
            if member.isdir():
                continue
            if not member.isfile():
                raise _archive_invalid(asset, f"member {member.name!r} is not a regular file")
            if clean != name:
                logger.debug("ignoring archive member %r", member.name)
                continue
            if copied is not None:
                raise _archive_invalid(asset, f"{name!r} appears more than once")
            if member.size > limit:
                raise _archive_invalid(asset, f"{name!r} is {member.size} bytes, over {limit}")
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover - isfile() members always have data
                raise _archive_invalid(asset, f"{name!r} has no data")
            with source:
                copied = _copy_bounded(source, out, limit, asset)
        if copied is None:
            raise _archive_invalid(asset, f"no {name!r} at the root of the archive")
        return copied


def _extract_zip(
    path: str, name: str, asset: str, out: IO[bytes], limit: int,
    unpacked: Callable[[_Reader], _Unpacked],
) -> Tuple[str, int]:
    """Only the binary is decompressed: the central directory says where each member is."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_ARCHIVE_MEMBERS:
            raise _archive_invalid(asset, f"more than {MAX_ARCHIVE_MEMBERS} members")
        found: Optional[zipfile.ZipInfo] = None
        for info in infos:
            clean = _member_name(asset, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _archive_invalid(asset, f"member {info.filename!r} is a symbolic link")
            if info.is_dir():
                continue
            if mode and not stat.S_ISREG(mode):
                raise _archive_invalid(asset, f"member {info.filename!r} is not a regular file")
            if clean != name:
                continue
            if found is not None:
                raise _archive_invalid(asset, f"{name!r} appears more than once")
            if info.file_size > limit:
                raise _archive_invalid(asset, f"{name!r} is {info.file_size} bytes, over {limit}")
            found = info
        if found is None:
            raise _archive_invalid(asset, f"no {name!r} at the root of the archive")
        with archive.open(found) as source:
            return _copy_bounded(unpacked(source), out, limit, asset)


# --------------------------------------------------------------------------- install


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(what: str, url: str, asset: str, expected: str, actual: str, source: str,
              path: str) -> MeerkatError:
    return MeerkatError(
        "BINARY_INTEGRITY_MISMATCH",
        f"the {what} downloaded from {url} has SHA-256 {actual}, but {expected} was expected "
        f"(from {source}); it was deleted and nothing was installed or run. The download was "
        "corrupted or the server is not serving the genuine release: retry, check "
        "MEERKAT_DOWNLOAD_BASE_URL and any proxy, or install rkat-rpc yourself and set "
        "MEERKAT_BIN_PATH",
        {"url": url, "asset": asset, "path": path, "expected_sha256": expected,
         "actual_sha256": actual, "digest_source": source},
    )


def _temp(directory: str, suffix: str) -> Tuple[int, str]:
    return tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=directory)


def _unlink(path: Optional[str]) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - best effort cleanup
        logger.warning("could not remove %s: %s", path, exc)


def download_and_install(
    settings: DownloadSettings, target: Target, directory: str, deadline: Deadline
) -> Tuple[str, InstallRecord]:
    """Fetch, verify and install the binary into ``directory``; the caller holds the lock.

    Returns the installed path and its record. On any failure, the deadline included,
    nothing is left behind but the previous state of ``directory`` (which the caller has
    already emptied).
    """
    import requests
    urls = release_urls(settings, target)
    check_https(settings.base_url)
    final = os.path.join(directory, target.binary_name)
    archive_tmp: Optional[str] = None
    binary_tmp: Optional[str] = None
    manifest_tmp: Optional[str] = None
    with requests.Session() as session:
        expected, source, pinned_binary = _expected_archive_digest(
            session, settings, target, urls, deadline
        )
        logger.info("downloading %s", urls.archive_url)
        try:
            fd, archive_tmp = _temp(directory, ".archive")
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as handle:

                def sink(chunk: bytes) -> None:
                    digest.update(chunk)
                    handle.write(chunk)

                with _Transfer(session, urls.archive_url, settings, deadline,
                               "receiving the archive") as transfer:
                    _check_status(transfer.response, urls.archive_url)
                    declared = transfer.response.headers.get("content-length")
                    progress = _Progress(
                        settings.progress_stream,
                        f"Downloading rkat-rpc {settings.version} ({target.triple})",
                        int(declared) if declared and declared.isdigit() else None,
                    )
                    _stream_body(transfer, settings.max_archive_bytes, sink, progress)
            actual = digest.hexdigest()
            if actual != expected:
                raise _mismatch("archive", urls.archive_url, urls.asset, expected, actual,
                                source, final)
            logger.info("verified %s: sha256 %s (%s)", urls.asset, actual, source)

            fd, binary_tmp = _temp(directory, ".binary")
            with os.fdopen(fd, "wb") as out:
                binary_sha, size = extract_binary(
                    archive_tmp, target, urls.asset, out, settings.max_binary_bytes,
                    settings.max_unpacked_bytes,
                    lambda: _check_deadline(deadline, urls.archive_url, "unpacking the archive"),
                )
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise _archive_invalid(urls.asset, f"{target.binary_name!r} is empty")
            if pinned_binary is not None and binary_sha != pinned_binary.lower():
                raise _mismatch("binary inside", urls.archive_url, urls.asset,
                                pinned_binary.lower(), binary_sha, "pinned", final)
            os.chmod(binary_tmp, 0o755)
            record = InstallRecord(
                version=settings.version,
                target=target.triple,
                asset=urls.asset,
                url=urls.archive_url,
                archive_sha256=actual,
                binary_sha256=binary_sha,
                digest_source=source,
            )
            fd, manifest_tmp = _temp(directory, ".json")
            with os.fdopen(fd, "w", encoding="utf-8") as text_out:
                text_out.write(record.to_json())
                text_out.flush()
                os.fsync(text_out.fileno())
            _check_deadline(deadline, urls.archive_url, "installing the binary")
            # Manifest first: a binary without its manifest is treated as tampered and
            # replaced, so a crash between the two renames cannot leave an unverifiable binary.
            os.replace(manifest_tmp, os.path.join(directory, MANIFEST_NAME))
            manifest_tmp = None
            os.replace(binary_tmp, final)
            binary_tmp = None
        except OSError as exc:
            raise MeerkatError(
                "BINARY_DOWNLOAD_FAILED",
                f"could not write rkat-rpc into the cache directory {directory}: {exc}; set "
                "MEERKAT_CACHE_DIR to a writable directory with free space, "
                + _FALLBACK_ADVICE,
                {"url": urls.archive_url, "reason": "cache_unwritable", "cause": str(exc),
                 "path": directory},
            ) from exc
        finally:
            _unlink(archive_tmp)
            _unlink(binary_tmp)
            _unlink(manifest_tmp)
    logger.info("installed rkat-rpc %s at %s", settings.version, final)
    return final, record
