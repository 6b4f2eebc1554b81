"""``file://`` image URLs: regular files below ``MediaConfig.media_root``, nothing else
(reliability note T13).

Refused unless ``media_root`` is set; then the file is opened component by component with no
symlink followed (:func:`read_local_file`).  Every refusal is an :class:`APIError` 400 that says
why.
"""

from __future__ import annotations

import errno
import os
import stat
import urllib.parse

from mm15.serve.config import MediaConfig, MediaKind
from mm15.serve.schemas import APIError


def _bad(message: str, code: str = "invalid_image_url") -> APIError:
    return APIError(400, message, code=code)


def read_local_file(url: str, cfg: MediaConfig, where: str, *, kind: MediaKind = "image") -> bytes:
    """A ``file://`` URL's bytes, only for regular files inside ``cfg.media_root``, at most
    ``cfg.max_bytes(kind)`` of them.

    There is no check-then-open: the root is opened as a directory and every component below it
    is opened relative to its parent's descriptor with ``O_NOFOLLOW`` (openat), so a path swapped
    while it is being read cannot lead outside the root.  **No symbolic link is followed below
    the root** (one inside pointing inside is refused too); the root itself may be or pass
    through a symlink, the operator's choice.  ``..`` is refused; the file's type and size come
    from ``fstat`` on the opened descriptor, and the final open is non-blocking, so a FIFO or a
    device is refused without blocking.
    """
    if cfg.media_root is None:
        raise _bad(
            f"{where}: file:// URLs are disabled (the server has no --media-root)",
            "local_files_disabled",
        )
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:
        raise _bad(f"{where}: malformed file URL: {e}") from e
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise _bad(f"{where}: a file URL must be file:///absolute/path (no host, query, fragment)")
    max_bytes = cfg.max_bytes(kind)
    names = _names_below_root(parts.path, cfg.media_root, where)
    fd = _open_below_root(cfg.media_root, names, parts.path, where)
    try:
        st = os.fstat(fd)  # the opened file's type and size, not the path's
        if not stat.S_ISREG(st.st_mode):
            raise _bad(f"{where}: {parts.path!r} is not a regular file")
        if st.st_size > max_bytes:
            raise _bad(
                f"{where}: file is {st.st_size:,} bytes, above the limit of "
                f"{max_bytes:,} (max_{kind}_bytes)",
                f"{kind}_too_large",
            )
        chunks, size = [], 0
        while size <= max_bytes:  # bounded even if the file grows after fstat()
            chunk = os.read(fd, min(2**20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise _bad(f"{where}: cannot read {parts.path!r}: {e.strerror}", "image_missing") from e
    finally:
        os.close(fd)
    if size > max_bytes:
        raise _bad(
            f"{where}: file is over the limit of {max_bytes:,} bytes (max_{kind}_bytes)",
            f"{kind}_too_large",
        )
    return b"".join(chunks)


def _names_below_root(path: str, media_root: str, where: str) -> list[bytes]:
    """The components of a file URL's ``path`` below the media root (raw bytes, unquoted)."""
    try:
        raw = urllib.parse.unquote_to_bytes(path)
    except UnicodeEncodeError as e:  # a lone surrogate from a JSON "\udXXX" escape
        raise _bad(f"{where}: the file URL's path is not valid Unicode: {e.reason}") from e
    if b"\0" in raw:
        raise _bad(f"{where}: the file URL's path has a NUL byte (%00); no file is named that")
    if not raw.startswith(b"/"):
        raise _bad(f"{where}: a file URL must be file:///absolute/path, not {path!r}")
    comps = [c for c in raw.split(b"/") if c not in (b"", b".")]
    if b".." in comps:
        raise _bad(
            f"{where}: {path!r} has a '..' component; refused, as it could lead outside "
            "the media root",
            "path_outside_root",
        )
    for root in (os.path.abspath(media_root), os.path.realpath(media_root)):
        prefix = [c for c in os.fsencode(root).split(b"/") if c]
        if comps[: len(prefix)] == prefix:
            return comps[len(prefix) :]
    raise _bad(f"{where}: {path!r} is outside the media root", "path_outside_root")


def _open_below_root(media_root: str, names: list[bytes], path: str, where: str) -> int:
    """A read-only descriptor of ``media_root/names...``, opened component by component."""
    if os.open not in os.supports_dir_fd or not hasattr(os, "O_NOFOLLOW"):
        raise _bad(
            f"{where}: file:// URLs need openat() and O_NOFOLLOW, which this OS lacks",
            "local_files_disabled",
        )
    walk = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    last = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(media_root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _bad(
            f"{where}: the media root cannot be opened: {e.strerror}", "image_missing"
        ) from e
    names = names or [b"."]  # the root itself: refused below as not a regular file
    for i, name in enumerate(names):
        try:
            child = os.open(name, last if i == len(names) - 1 else walk, dir_fd=fd)
        except OSError as e:
            raise _walk_error(e, fd, name, path, where) from e
        finally:
            os.close(fd)
        fd = child
    return fd


def _walk_error(e: OSError, dir_fd: int, name: bytes, path: str, where: str) -> APIError:
    """The 400 for a failed open below the root (``dir_fd`` still open)."""
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
        except OSError:
            link = False
        if link or e.errno == errno.ELOOP:
            return _bad(
                f"{where}: {path!r} is or passes through a symbolic link; no symlink is "
                "followed below the media root (it could lead outside the media root)",
                "path_outside_root",
            )
    return _bad(f"{where}: cannot read {path!r}: {e.strerror}", "image_missing")
