"""Real parts for the binary-resolution tests: a release server on 127.0.0.1 and archives.

The server is the standard library's ``http.server`` wrapped in TLS with a throwaway CA made
by the ``openssl`` command; archives are built in memory with ``tarfile``/``zipfile`` and
hold a tiny shell script standing in for rkat-rpc (it starts the scripted fake runtime).
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import attrs
import pytest

from meerkat_sync._binary import cache_entry
from meerkat_sync._download import DownloadSettings, InstallRecord, Target, platform_target

REPO_ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.5.0"
LINUX = Target("x86_64-unknown-linux-gnu", "tar.gz", "rkat-rpc")
WINDOWS = Target("x86_64-pc-windows-msvc", "zip", "rkat-rpc.exe")
ASSET = f"rkat-rpc-{VERSION}-{LINUX.triple}.tar.gz"
ZIP_ASSET = f"rkat-rpc-{VERSION}-{WINDOWS.triple}.zip"
RELEASE = f"/v{VERSION}/"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stand_in_script(marker: Optional[Path] = None) -> bytes:
    """A shell script that starts the fake runtime, recording each run in ``marker``."""
    lines = ["#!/bin/sh"]
    if marker is not None:
        lines.append(f"echo ran >> {shlex.quote(str(marker))}")
    root = shlex.quote(str(REPO_ROOT))
    lines.append(f'PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH')
    lines.append(f'exec {shlex.quote(sys.executable)} -m meerkat_sync.testing.fake_rkat "$@"')
    return ("\n".join(lines) + "\n").encode()


# (name, data, kind, linkname); kind: "file" | "dir" | "symlink" | "hardlink" | "fifo"
Member = Tuple[str, bytes, str, str]


def file_member(name: str, data: bytes) -> Member:
    return (name, data, "file", "")


def make_tar(members: List[Member]) -> bytes:
    """A ``.tar.gz``, byte-for-byte reproducible (the gzip header's mtime is fixed)."""
    return gzip.compress(_tar_bytes(members), mtime=0)


def make_tar_with_zeros_first(name: str, size: int, members: List[Member]) -> bytes:
    """A ``.tar.gz`` whose first member is ``size`` zero bytes, followed by ``members``.

    A 3 GiB member unpacks from about 3 MiB, built in milliseconds: gzip allows concatenated
    members, so one compressed MiB of zeros is repeated rather than compressing gigabytes.
    """
    mib = 1024 * 1024
    assert size % mib == 0, "whole MiB keep the tar blocks aligned"
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
    header = gzip.compress(info.tobuf(tarfile.USTAR_FORMAT), mtime=0)
    zeros = gzip.compress(bytes(mib), mtime=0)
    return header + zeros * (size // mib) + make_tar(members)


def _tar_bytes(members: List[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, kind, linkname in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size = len(data)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = linkname
            tar.addfile(info)
    return buffer.getvalue()


def make_zip(members: List[Member]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, kind, linkname in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            if kind == "symlink":
                info.external_attr = (0o120777 << 16)
                archive.writestr(info, linkname)
            else:
                info.external_attr = (0o100755 << 16)
                archive.writestr(info, data)
    return buffer.getvalue()


def checksums(entries: Dict[str, str]) -> bytes:
    """``sha256sum`` output as the release workflow writes it: per-job directory prefixes."""
    return "".join(
        f"{digest}  ./build-job-{index}/{name}\n"
        for index, (name, digest) in enumerate(entries.items())
    ).encode()


# --------------------------------------------------------------------------- TLS


@attrs.frozen
class Certs:
    ca: str
    cert: str
    key: str


def make_certs(directory: Path) -> Certs:
    """A throwaway CA and a server certificate for 127.0.0.1, or skip without ``openssl``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("HTTPS cases need the openssl command to make a throwaway certificate")
    d = directory
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
        "-days", "2", "-subj", "/CN=meerkat-sync test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "server.pem"),
        "-days", "2", "-extfile", str(d / "ext.cnf"))
    return Certs(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"))


# --------------------------------------------------------------------------- server


@attrs.define
class Route:
    body: bytes = b""
    status: int = 200
    #: None: the real length; an int: declared instead; -1: no Content-Length (close ends it).
    content_length: Optional[int] = None
    redirect: Optional[str] = None
    delay: float = 0.0
    stall_before_headers: bool = False
    #: Send this many body bytes, then stall until the server stops.
    stall_after: Optional[int] = None
    #: Send this many body bytes, then close the connection.
    close_after: Optional[int] = None
    #: Send the body one byte at a time, this many seconds apart: a trickling server.
    trickle: float = 0.0
    #: With ``trickle``: trickle the status line and headers as well.
    trickle_headers: bool = False


class ReleaseServer:
    """A release host on 127.0.0.1 that counts requests per path."""

    def __init__(self, certs: Optional[Certs]) -> None:
        self.routes: Dict[str, Route] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.hits[path] += 1
                    route = server.routes.get(path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.delay:
                    time.sleep(route.delay)
                if route.stall_before_headers:
                    server.stop_event.wait(30)
                    return
                if route.trickle_headers:
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(route.body)}\r\n\r\n"
                    self.close_connection = True
                    self.trickle(head.encode() + route.body, route.trickle)
                    return
                if route.redirect is not None:
                    self.send_response(route.status if route.status != 200 else 302)
                    self.send_header("Location", route.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", "application/octet-stream")
                if route.content_length is None:
                    self.send_header("Content-Length", str(len(route.body)))
                elif route.content_length >= 0:
                    self.send_header("Content-Length", str(route.content_length))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if route.trickle:
                    self.trickle(route.body, route.trickle)
                else:
                    self.write_body(route.body, route)

            def trickle(self, data: bytes, interval: float) -> None:
                try:
                    for index in range(len(data)):
                        if server.stop_event.wait(interval):
                            return
                        self.wfile.write(data[index : index + 1])
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.close_connection = True

            def write_body(self, body: bytes, route: Route) -> None:
                try:
                    if route.stall_after is not None:
                        self.wfile.write(body[: route.stall_after])
                        self.wfile.flush()
                        server.stop_event.wait(30)
                        return
                    if route.close_after is not None:
                        self.wfile.write(body[: route.close_after])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    for start in range(0, len(body), 256 * 1024):
                        self.wfile.write(body[start : start + 256 * 1024])
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if certs is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certs.cert, certs.key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def publish(
        self,
        archive: bytes,
        *,
        asset: str = ASSET,
        listed: Optional[Dict[str, str]] = None,
        **route: Any,
    ) -> None:
        """Serve ``archive`` as ``asset`` and a checksums file (by default listing its digest)."""
        self.routes[RELEASE + asset] = Route(body=archive, **route)
        entries = {asset: sha256(archive)} if listed is None else listed
        self.routes[RELEASE + "checksums.sha256"] = Route(body=checksums(entries))

    def archive_hits(self, asset: str = ASSET) -> int:
        return self.hits[RELEASE + asset]

    def checksum_hits(self) -> int:
        return self.hits[RELEASE + "checksums.sha256"]

    def close(self) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


# --------------------------------------------------------------------------- settings


def host_target() -> Target:
    """The real platform's target, or skip where the release has no build (or on Windows,
    where the shell-script stand-in cannot run)."""
    if os.name == "nt":
        pytest.skip("the stand-in rkat-rpc is a shell script")
    try:
        return platform_target()
    except Exception as exc:  # MeerkatError UNSUPPORTED_PLATFORM
        pytest.skip(f"no release target for this machine: {exc}")


def make_settings(cache: Path, base_url: str, ca: Union[str, bool] = True,
                  **overrides: Any) -> DownloadSettings:
    values: Dict[str, Any] = {
        "cache_root": str(cache),
        "base_url": base_url,
        "verify": ca,
        "connect_timeout": 5.0,
        "read_timeout": 5.0,
        "lock_timeout": 20.0,
        "system": "Linux",
        "machine": "x86_64",
        "musl": False,
    }
    values.update(overrides)
    return DownloadSettings(**values)


def seed_cache(settings: DownloadSettings, target: Target, data: bytes) -> Path:
    """Install ``data`` into the cache as if a verified download had put it there."""
    entry = cache_entry(settings, target)
    os.makedirs(entry.directory, exist_ok=True)
    Path(entry.binary).write_bytes(data)
    os.chmod(entry.binary, 0o755)
    record = InstallRecord(
        version=settings.version, target=target.triple, asset=ASSET, url="https://example.invalid/",
        archive_sha256="0" * 64, binary_sha256=sha256(data), digest_source="test",
    )
    Path(entry.manifest).write_text(record.to_json())
    return Path(entry.binary)


def leftovers(settings: DownloadSettings, target: Target) -> List[str]:
    """Files in the cache entry's directory other than the lock."""
    directory = Path(cache_entry(settings, target).directory)
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name != ".lock")


def isolated_env(path_dir: Path, **extra: str) -> Dict[str, str]:
    """An environment with nothing on PATH and none of the MEERKAT_* variables set."""
    env = {"PATH": str(path_dir), "HOME": str(path_dir)}
    env.update(extra)
    return env
