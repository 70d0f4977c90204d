"""Reading a user's file once, safely: only regular files, with a size bound where one makes sense,
and the bytes that were parsed are the bytes that were hashed.

Every reader of user input (config files, dataset files, the JSON files of a run folder) goes
through :func:`read_file`. It opens the path once (symlinks followed), checks what was opened with
``fstat`` (so a file swapped between a check and the open cannot slip through), and refuses
anything that is not a regular file: a FIFO would block forever, ``/dev/zero`` or
``/dev/urandom`` would be read until memory runs out. ``O_NONBLOCK`` keeps the open of a FIFO from
blocking. The caller parses the returned bytes and fingerprints the same bytes
(:func:`fingerprint_bytes`), never a second read of the path.

No heavy imports: this runs in ``modelforge validate``.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: A config file larger than this is refused (configs are a few KiB; the API takes 1 MiB bodies).
MAX_CONFIG_BYTES = 4 << 20
#: A JSON file of a run folder (config, manifest, status, metrics) larger than this is damaged.
MAX_RUN_JSON_BYTES = 64 << 20


class NotRegularFile(OSError):
    """The path names something other than a regular file (a FIFO, a device, a socket)."""


class FileTooLarge(OSError):
    """The file holds more bytes than the caller allows."""


@dataclass(frozen=True)
class FileBytes:
    """What one read of a file returned, and its fingerprint."""

    data: bytes
    fingerprint: str


def fingerprint_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``: the fingerprint manifests record for a dataset."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def describe_error(exc: OSError | ValueError) -> str:
    """A short reason for a failed :func:`read_file`, without the path (the caller names it)."""
    if isinstance(exc, ValueError):
        return "the path contains a NUL byte"
    if isinstance(exc, (NotRegularFile, FileTooLarge)):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    if exc.errno == errno.ENAMETOOLONG:
        return "the path is too long"
    return exc.strerror or type(exc).__name__


def read_head(path: str | Path, size: int) -> bytes:
    """At most the first ``size`` bytes of the regular file at ``path`` (for previews); the same
    checks and errors as :func:`read_file`."""
    fd = _open_regular(path)
    try:
        chunks: list[bytes] = []
        left = size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _open_regular(path: str | Path) -> int:
    name = os.fspath(path)
    if "\0" in name:
        raise ValueError("embedded null byte")
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", name)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"is {_kind(info.st_mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(path: str | Path, *, limit: int | None = None) -> FileBytes:
    """The whole content of the regular file at ``path`` (symlinks followed), read once.

    :param limit: refuse a file larger than this many bytes (:class:`FileTooLarge`); ``None``: no
        bound (datasets may be large; a regular file ends).
    :raises FileNotFoundError, IsADirectoryError, PermissionError: as ``open`` would.
    :raises NotRegularFile: a FIFO, a device or a socket.
    :raises ValueError: the path holds a NUL byte.
    """
    fd = _open_regular(path)
    try:
        info = os.fstat(fd)
        if limit is not None and info.st_size > limit:
            raise FileTooLarge(f"is {info.st_size:,} bytes, more than the {limit:,} bytes allowed")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if limit is not None and size > limit:  # the file grew while we read it
                raise FileTooLarge(f"holds more than the {limit:,} bytes allowed")
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return FileBytes(data, fingerprint_bytes(data))
