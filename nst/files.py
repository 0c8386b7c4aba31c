"""Files: atomic writes, the cache directory and HTTP downloads, each written once.

A reader (or a crash) never sees a half-written file: everything goes to a temp file beside its
destination and is renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from nst.errors import NstError, one_line

CHUNK = 1 << 20
# Files get the modes the user's umask gives new files (mkstemp's are 0600); read once, as
# os.umask can only be read by setting it (not safe while other threads create files).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class WriteError(NstError, OSError):
    """A file could not be written (full disk, read-only or unwritable directory): one line
    naming the file and the reason; still an OSError for code that handles those."""


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    reason = err.strerror or one_line(err)
    hint = ""
    if err.errno == errno.ENOSPC:
        hint = "; free some space, then run the same command with resume=true"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "; choose a writable directory"
    return WriteError(f"cannot write {path}: {reason}{hint}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a uniquely named temp file beside ``path``, fsync it and rename it
    into place. Concurrent writers (a sweep's jobs caching the same weights) each produce a whole
    file; the last rename wins. An OSError becomes a one-line :class:`WriteError`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, NstError):
            raise write_error(path, e) from None
        raise
    return path


def probe_writable(path: str | os.PathLike) -> None:
    """Whether a directory ``path`` can be created and written: a WriteError now instead of a
    traceback later (``os.access`` says yes to root on read-only file systems). Directories the
    probe creates are removed again."""
    path = Path(path)
    missing = path
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    created = not path.exists()
    try:
        for attempt in range(3):
            path.mkdir(parents=True, exist_ok=True)
            try:
                with tempfile.TemporaryFile(dir=path) as f:
                    f.write(b"x")
                    f.flush()
                    os.fsync(f.fileno())
                break
            except FileNotFoundError:
                # A parallel job's probe removed the directory it had also created: again.
                if attempt == 2:
                    raise
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if created:
            for d in [path, *path.parents]:
                if d == missing.parent:
                    break
                with contextlib.suppress(OSError):
                    d.rmdir()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON, written atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def cache_root() -> Path:
    """``$NST_CACHE_DIR``, else ``$XDG_CACHE_HOME/nst``, else ``~/.cache/nst`` (not created)."""
    if os.environ.get("NST_CACHE_DIR"):
        return Path(os.environ["NST_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "nst"
    return Path.home() / ".cache" / "nst"


def cache_dir(error: type[NstError] = NstError) -> Path:
    """:func:`cache_root`, created on first use; ``error`` (one line) when it cannot be used."""
    path = cache_root()
    reason = None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or str(err)
    if reason is None and not os.access(path, os.W_OK | os.X_OK):
        reason = "not writable"
    if reason is not None:
        raise error(
            f"cannot use the nst cache directory {path} ({reason}); "
            "set NST_CACHE_DIR (or XDG_CACHE_HOME) to a writable directory"
        )
    return path


class DownloadError(NstError):
    """A download failed; ``unreachable`` when the server could not be reached or the transfer
    broke off (later downloads from it would fail too), not for HTTP errors or bad URLs."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


def download(
    url: str,
    sink: Callable[[bytes], None],
    *,
    timeout: float = 30,
    user_agent: str | None = None,
    max_bytes: int | None = None,
) -> None:
    """Stream the body of ``url`` into ``sink`` chunk by chunk. Every failure (HTTP status,
    unreachable host, timeout, truncated response, malformed URL, over ``max_bytes``) raises
    :class:`DownloadError` with a one-line reason in parentheses after ``cannot download URL``."""
    headers = {"User-Agent": user_agent} if user_agent else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = 0
            while chunk := response.read(CHUNK):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise DownloadError(f"cannot download {url} (larger than {max_bytes} bytes)")
                sink(chunk)
    except urllib.error.HTTPError as err:
        raise DownloadError(
            f"cannot download {url} (HTTP {err.code} {one_line(err.reason)})"
        ) from err
    except urllib.error.URLError as err:
        raise DownloadError(f"cannot download {url} ({one_line(err.reason)})", True) from err
    except (OSError, http.client.HTTPException) as err:
        # OSError: timeouts and resets mid-transfer; HTTPException: truncated responses.
        reason = one_line(err) or type(err).__name__
        raise DownloadError(f"cannot download {url} ({reason})", True) from err
    except ValueError as err:  # a malformed URL
        raise DownloadError(f"cannot download {url} ({one_line(err)})") from err
