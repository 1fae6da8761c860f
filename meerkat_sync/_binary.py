"""Finding the ``rkat-rpc`` executable to run: the resolution order.

First hit wins (``docs/binary-resolution.rst`` is the user-facing version):

1. ``MEERKAT_BIN_PATH`` when set (empty or not an executable: an error naming the variable);
2. an explicit ``rkat_path`` other than ``"rkat-rpc"`` (missing: an error naming the path);
3. ``rkat-rpc`` on ``PATH``;
4. the cached download for this contract version and platform, re-hashed before every use
   (a tampered file is deleted and fetched again, never run);
5. a verified download of the release archive (``_download.py``).

Resolution depends only on the environment mapping, the filesystem and the network, so each
step can be tested alone. There is deliberately no ``rkat rpc`` fallback: that subcommand does
not exist in rkat 0.5 (PROTOCOL.md §1.2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import sys
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import attrs
import filelock

from ._deadline import Deadline, check_timeout
from ._digests import RKAT_RPC_VERSION
from ._download import (
    MANIFEST_NAME,
    TEMP_PREFIX,
    DownloadSettings,
    InstallRecord,
    Target,
    check_https,
    deadline_error,
    download_and_install,
    platform_target,
    release_urls,
    sha256_file,
)
from .errors import MeerkatError

__all__ = [
    "DEFAULT_RKAT_PATH",
    "CacheEntry",
    "DownloadSettings",
    "Resolution",
    "cache_entry",
    "describe_resolution",
    "locate_rkat_rpc",
    "resolve_rkat_rpc",
]

logger = logging.getLogger("meerkat_sync")

DEFAULT_RKAT_PATH = "rkat-rpc"
_LEGACY_NAMES = ("rkat", "rkat.exe")


@attrs.frozen
class Resolution:
    """Which executable will run, and why it was chosen.

    ``source`` is one of ``"MEERKAT_BIN_PATH"``, ``"rkat_path"``, ``"PATH"``, ``"cache"`` or
    ``"download"``.
    """

    path: str
    source: str
    detail: str


@attrs.frozen
class CacheEntry:
    """Where one (version, target) lives in the cache."""

    directory: str
    binary: str
    manifest: str
    lock: str


def cache_entry(settings: DownloadSettings, target: Target) -> CacheEntry:
    """``<cache root>/bin/rkat-rpc/<version>/<target triple>/``."""
    directory = os.path.join(settings.cache_root, "bin", "rkat-rpc", settings.version,
                             target.triple)
    return CacheEntry(
        directory=directory,
        binary=os.path.join(directory, target.binary_name),
        manifest=os.path.join(directory, MANIFEST_NAME),
        lock=os.path.join(directory, ".lock"),
    )


# --------------------------------------------------------------------------- steps 1-3


def _search_path(environ: Mapping[str, str]) -> str:
    value = environ.get("PATH")
    return os.defpath if value is None else value


def _has_separator(value: str) -> bool:
    return "/" in value or os.sep in value or bool(os.altsep and os.altsep in value)


def _lookup(value: str, environ: Mapping[str, str]) -> Tuple[Optional[str], str]:
    """Return (absolute path, "") for an executable, or (None, why not)."""
    if _has_separator(value):
        path = os.path.abspath(os.path.expanduser(value))
        if not os.path.exists(path):
            return None, "does not exist"
        if not os.path.isfile(path):
            return None, "is not a file"
        if os.name != "nt" and not os.access(path, os.X_OK):
            return None, f"is not executable (chmod +x {path})"
        return path, ""
    found = shutil.which(value, path=_search_path(environ))
    if found is None:
        return None, "is not a command on PATH"
    return os.path.abspath(found), ""


def _refuse_legacy(path: str, origin: str) -> None:
    if os.path.basename(path).lower() in _LEGACY_NAMES:
        raise MeerkatError(
            "LEGACY_BINARY_UNSUPPORTED",
            f"{origin} points at the rkat CLI ({path}), which has had no 'rpc' subcommand since "
            f"rkat 0.3.3; point it at rkat-rpc {RKAT_RPC_VERSION} instead",
            {"origin": origin, "path": path},
        )


def _explicit(value: str, origin: str, environ: Mapping[str, str]) -> Resolution:
    """Steps 1 and 2: a user-named binary is used as given, or is an error - never skipped."""
    label = f"{origin}={value!r}"
    if origin == "MEERKAT_BIN_PATH":
        fix = ("set MEERKAT_BIN_PATH to the full path of an executable rkat-rpc, or unset it so "
               "meerkat-sync looks on PATH, in its cache and then downloads rkat-rpc")
    else:
        fix = ("pass the full path of an executable rkat-rpc, or leave rkat_path at its default "
               "so meerkat-sync looks on PATH, in its cache and then downloads rkat-rpc")
    stripped = value.strip()
    if not stripped:
        raise MeerkatError(
            "BINARY_NOT_FOUND", f"{origin} is set but empty; {fix}",
            {"origin": origin, "value": value},
        )
    path, problem = _lookup(stripped, environ)
    if path is None:
        raise MeerkatError(
            "BINARY_NOT_FOUND", f"{label} {problem}; {fix}",
            {"origin": origin, "value": value, "problem": problem},
        )
    _refuse_legacy(path, origin)
    return Resolution(path, origin, f"{label} resolved to {path}")


# --------------------------------------------------------------------------- step 4


def _check_cache(
    entry: CacheEntry, settings: DownloadSettings, target: Target
) -> Tuple[str, str]:
    """Return ("ok" | "missing" | "bad", explanation), hashing the cached binary."""
    try:
        info = os.lstat(entry.binary)
    except FileNotFoundError:
        return "missing", f"nothing cached at {entry.binary}"
    except OSError as exc:
        return "bad", f"cannot stat {entry.binary}: {exc}"
    if not stat.S_ISREG(info.st_mode):
        return "bad", "it is not a regular file"
    if os.name != "nt" and not info.st_mode & stat.S_IXUSR:
        return "bad", "it is not executable"
    try:
        with open(entry.manifest, encoding="utf-8") as handle:
            record = InstallRecord.from_json(handle.read())
    except (OSError, ValueError) as exc:
        return "bad", f"its install record {entry.manifest} is missing or unreadable ({exc})"
    if (record.version, record.target) != (settings.version, target.triple):
        return "bad", f"its install record is for {record.version} {record.target}"
    pin = settings.pinned_for(target.triple)
    if pin is not None and (
        pin.archive_sha256.lower() != record.archive_sha256
        or (pin.binary_sha256 is not None and pin.binary_sha256.lower() != record.binary_sha256)
    ):
        return "bad", "it does not match the digests pinned in this meerkat-sync version"
    try:
        actual = sha256_file(entry.binary)
    except OSError as exc:
        return "bad", f"cannot read it: {exc}"
    if actual != record.binary_sha256:
        return "bad", (f"its SHA-256 is {actual} but {record.binary_sha256} was recorded when it "
                       "was installed")
    return "ok", (f"cached download of {record.asset}, sha256 {actual} re-verified "
                  f"(archive verified against {record.digest_source} when installed)")


def _delete_entry(entry: CacheEntry, why: str) -> None:
    logger.warning("deleting the cached rkat-rpc at %s: %s", entry.binary, why)
    for path in (entry.binary, entry.manifest):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _clean_temps(directory: str) -> None:
    """Remove half-written files left by a process killed mid-download (we hold the lock)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(TEMP_PREFIX):
            logger.info("removing leftover %s", os.path.join(directory, name))
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


_THREAD_LOCKS: Dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: str) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(path, threading.Lock())


def _lock_timeout_error(entry: CacheEntry, timeout: float) -> MeerkatError:
    return MeerkatError(
        "BINARY_LOCK_TIMEOUT",
        f"waited {timeout:g} s for the cache lock {entry.lock} while another process or thread "
        "was installing rkat-rpc; retry, raise MEERKAT_LOCK_TIMEOUT, or, if the cache is on a "
        "network filesystem that does not support locks, set MEERKAT_CACHE_DIR to a local "
        "directory",
        {"lock_path": entry.lock, "timeout": timeout},
    )


@contextlib.contextmanager
def _locked(
    entry: CacheEntry, settings: DownloadSettings, deadline: Deadline, url: str
) -> Iterator[None]:
    """Hold the (version, target) lock: one installer across threads and processes.

    The OS releases the file lock when its holder dies, so a killed process never wedges
    later runs; the lock timeout bounds how long a waiter blocks behind a slow download,
    and the wait counts towards the download's ``deadline`` too.
    """
    lock_deadline = Deadline(settings.lock_timeout)

    def wait() -> float:
        left = [d.remaining() for d in (lock_deadline, deadline)]
        return max(0.0, min(x for x in left if x is not None))

    def timed_out() -> MeerkatError:
        if deadline.expired():
            return deadline_error(deadline, url, "waiting for the cache lock")
        return _lock_timeout_error(entry, settings.lock_timeout)

    try:
        os.makedirs(entry.directory, exist_ok=True)
    except OSError as exc:
        raise MeerkatError(
            "BINARY_DOWNLOAD_FAILED",
            f"could not create the cache directory {entry.directory}: {exc}; set "
            "MEERKAT_CACHE_DIR to a writable directory, or install rkat-rpc yourself and set "
            "MEERKAT_BIN_PATH",
            {"reason": "cache_unwritable", "path": entry.directory, "cause": str(exc)},
        ) from exc
    local = _thread_lock(entry.lock)
    if not local.acquire(timeout=wait()):
        raise timed_out()
    try:
        lock = filelock.FileLock(entry.lock)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            logger.info("another process is installing rkat-rpc; waiting for %s", entry.lock)
            try:
                lock.acquire(timeout=wait())
            except filelock.Timeout:
                raise timed_out() from None
        except OSError as exc:
            raise MeerkatError(
                "BINARY_DOWNLOAD_FAILED",
                f"could not lock {entry.lock}: {exc}; set MEERKAT_CACHE_DIR to a writable local "
                "directory, or install rkat-rpc yourself and set MEERKAT_BIN_PATH",
                {"reason": "cache_unwritable", "path": entry.lock, "cause": str(exc)},
            ) from exc
        try:
            yield
        finally:
            lock.release()
    finally:
        local.release()


# --------------------------------------------------------------------------- the order


def _not_found(
    tried: List[str], allow: str, extra: Optional[Dict[str, Any]] = None
) -> MeerkatError:
    places = "\n".join(f"  - {line}" for line in tried)
    details: Dict[str, Any] = {"tried": list(tried)}
    details.update(extra or {})
    return MeerkatError(
        "BINARY_NOT_FOUND",
        f"could not find rkat-rpc {RKAT_RPC_VERSION}. Tried:\n{places}\nTo fix: install "
        f"rkat-rpc {RKAT_RPC_VERSION} and put it on PATH, set MEERKAT_BIN_PATH to its full path, "
        f"or {allow}",
        details,
    )


def _resolve(
    rkat_path: str,
    environ: Mapping[str, str],
    download: bool,
    settings: Optional[DownloadSettings],
    repair: bool,
    timeout: Optional[float] = None,
) -> Resolution:
    tried: List[str] = []
    from_env = environ.get("MEERKAT_BIN_PATH")
    if from_env is not None:
        return _explicit(from_env, "MEERKAT_BIN_PATH", environ)
    tried.append("MEERKAT_BIN_PATH: not set")
    if rkat_path != DEFAULT_RKAT_PATH:
        return _explicit(rkat_path, "rkat_path", environ)
    found = shutil.which(DEFAULT_RKAT_PATH, path=_search_path(environ))
    if found is not None:
        found = os.path.abspath(found)
        return Resolution(found, "PATH", f"rkat-rpc found on PATH at {found}")
    tried.append("PATH: no executable rkat-rpc in any PATH directory")

    if settings is None:
        settings = DownloadSettings.from_environ(environ)
    deadline = Deadline(settings.download_deadline if timeout is None else timeout)
    try:
        target = platform_target(settings.system, settings.machine, musl=settings.musl)
    except MeerkatError as exc:
        tried.append("cache and download: no prebuilt rkat-rpc for this platform")
        details = dict(exc.details or {})
        details["tried"] = tried
        raise MeerkatError(exc.code, exc.message, details) from None
    entry = cache_entry(settings, target)
    state, why = _check_cache(entry, settings, target)
    if state == "ok":
        return Resolution(entry.binary, "cache", why)
    if state == "missing":
        tried.append(f"cache: nothing at {entry.binary}")
    elif not repair:
        tried.append(f"cache: {entry.binary} fails verification ({why}) and would be deleted")

    urls = release_urls(settings, target)
    if settings.no_download or not download:
        if state == "bad" and repair:
            with _locked(entry, settings, deadline, urls.archive_url):
                state, why = _check_cache(entry, settings, target)
                if state == "ok":
                    return Resolution(entry.binary, "cache", why)
                if state == "bad":
                    _delete_entry(entry, why)
                    tried.append(f"cache: deleted {entry.binary} because {why}")
                else:
                    tried.append(f"cache: nothing at {entry.binary}")
        reason = "disabled by MEERKAT_NO_DOWNLOAD" if settings.no_download else "not attempted"
        tried.append(f"download of {urls.archive_url}: {reason}")
        pin = settings.pinned_for(target.triple)
        plan = {
            "url": urls.archive_url,
            "into": entry.binary,
            "digest": "pinned in this package" if pin is not None else urls.checksums_url,
        }
        if settings.no_download:
            raise _not_found(tried, "allow the verified download (unset MEERKAT_NO_DOWNLOAD)")
        raise _not_found(tried, "allow the verified download (download=True)",
                         {"would_download": plan})

    check_https(settings.base_url)
    with _locked(entry, settings, deadline, urls.archive_url):
        state, why = _check_cache(entry, settings, target)
        if state == "ok":  # another process or thread installed it while we waited
            return Resolution(entry.binary, "cache", why)
        if state == "bad":
            _delete_entry(entry, why)
        _clean_temps(entry.directory)
        path, record = download_and_install(settings, target, entry.directory, deadline)
    return Resolution(
        path,
        "download",
        f"downloaded {record.url}; archive sha256 {record.archive_sha256} matched "
        f"{record.digest_source}; binary sha256 {record.binary_sha256}",
    )


def resolve_rkat_rpc(
    rkat_path: str = DEFAULT_RKAT_PATH,
    *,
    environ: Optional[Mapping[str, str]] = None,
    download: bool = True,
    settings: Optional[DownloadSettings] = None,
    timeout: Optional[float] = None,
) -> Resolution:
    """Return the executable to run, downloading and verifying it if needed.

    ``environ`` defaults to ``os.environ``; ``download=False`` stops before the download
    step; ``settings`` overrides what :meth:`DownloadSettings.from_environ` would read.
    ``timeout`` bounds the whole call in seconds, a download included (waiting for another
    process's download, fetching, unpacking, installing); None: ``MEERKAT_DOWNLOAD_DEADLINE``
    (default 300 s). Past it: ``BINARY_DOWNLOAD_FAILED`` with ``details["reason"] ==
    "deadline"``, nothing left behind and the cache lock released.
    Raises :class:`~meerkat_sync.errors.MeerkatError` (``BINARY_*``, ``UNSUPPORTED_PLATFORM``,
    ``LEGACY_BINARY_UNSUPPORTED``, ``INVALID_ARGS``); never returns a binary that failed
    verification.
    """
    limit = check_timeout(timeout)
    env = os.environ if environ is None else environ
    return _resolve(rkat_path, env, download, settings, repair=True, timeout=limit)


def locate_rkat_rpc(
    rkat_path: str = DEFAULT_RKAT_PATH,
    *,
    environ: Optional[Mapping[str, str]] = None,
    settings: Optional[DownloadSettings] = None,
) -> Resolution:
    """What :func:`resolve_rkat_rpc` would return, without downloading or deleting anything.

    When only a download would find it: ``BINARY_NOT_FOUND`` with ``details["would_download"]``.
    """
    env = os.environ if environ is None else environ
    return _resolve(rkat_path, env, download=False, settings=settings, repair=False)


def describe_resolution(
    rkat_path: str = DEFAULT_RKAT_PATH,
    *,
    environ: Optional[Mapping[str, str]] = None,
    settings: Optional[DownloadSettings] = None,
) -> str:
    """Explain what ``MeerkatClient(rkat_path)`` would run and why (it downloads on first use).

    Read-only: never downloads and never deletes. The first line is the path that would run,
    or a line starting with ``rkat-rpc would be downloaded`` / ``error:``.
    """
    try:
        found = locate_rkat_rpc(rkat_path, environ=environ, settings=settings)
    except MeerkatError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        plan = details.get("would_download")
        if exc.code == "BINARY_NOT_FOUND" and isinstance(plan, dict):
            lines = [
                f"rkat-rpc would be downloaded on first use from {plan['url']}",
                "  source: download",
                f"  into: {plan['into']}",
                f"  verified against: {plan['digest']}",
            ]
        else:
            lines = [f"error: {exc}"]
        tried = details.get("tried")
        if isinstance(tried, list) and (exc.code != "BINARY_NOT_FOUND" or plan is not None):
            lines.append("  tried:")
            lines.extend(f"    - {line}" for line in tried if not line.startswith("download"))
        return "\n".join(lines)
    return "\n".join([found.path, f"  source: {found.source}", f"  why: {found.detail}"])


if __name__ == "__main__":  # pragma: no cover - a debugging aid; the CLI is meerkat_sync --which
    sys.stdout.write(describe_resolution() + "\n")
