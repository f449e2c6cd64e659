"""Reading and unpacking dataset archives safely, and fingerprinting a user's copy.

- :func:`check_member_name`: refuse member names that would escape their folder.
- :func:`safe_extract`: unpack an archive, refusing anything that would land outside
  the target; nothing is written unless every member is safe.
- :class:`SourceTree`: read members of a folder, zip or tarball by relative name,
  refusing absolute paths, ``..`` components and links.
- :func:`iter_tar_files`: stream a tarball's regular files in one pass.
- :func:`path_fingerprint`: a short key of a local copy's identity (for its cache).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from recsys.data.sources.downloads import CHUNK_BYTES
from recsys.data.sources.errors import DataError, MalformedDataError, UnsafeArchiveError

# What zipfile, tarfile and gzip raise for a cut-short or damaged archive.
_BROKEN = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError)
_ARCHIVE_MAGIC = {b"PK\x03\x04": "zip file", b"\x1f\x8b": "gzip file", b"BZh": "bzip2 file"}

__all__ = [
    "SourceTree",
    "check_member_name",
    "iter_tar_files",
    "path_fingerprint",
    "safe_extract",
]


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


def _broken(path: str | os.PathLike[str], err: BaseException, what: str = "archive") -> DataError:
    """The error for an archive that is cut short or damaged (names it and the cause)."""
    reason = str(err) or type(err).__name__
    return MalformedDataError(
        str(path), None, f"the {what} is truncated or corrupted ({type(err).__name__}: {reason})"
    )


def _archive_kind(path: Path) -> str | None:
    """What the first bytes of a file say it is (``"zip file"``, ...), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    return next((kind for magic, kind in _ARCHIVE_MAGIC.items() if head.startswith(magic)), None)


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
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
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
        else:
            try:
                self._open_archive()
            except (DataError, FileNotFoundError):
                raise
            except _BROKEN as err:
                self.close()
                raise _broken(self.path, err) from None

    def _open_archive(self) -> None:
        if zipfile.is_zipfile(self.path):
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
        elif (kind := _archive_kind(self.path)) is not None:
            # An archive's first bytes but unreadable as one: most often cut short.
            raise _broken(self.path, EOFError("no readable archive directory"), kind)
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
        """A member's whole content.

        Raises:
            MalformedDataError: the archive is cut short or the member's CRC is wrong.
        """
        try:
            with self.open(name) as f:
                return f.read()
        except _BROKEN as err:
            if self.kind == "folder" and not isinstance(err, EOFError | zlib.error):
                raise
            raise _broken(self.display(name), err, "archive member") from None

    def fingerprint(self) -> str:
        """See :func:`path_fingerprint`."""
        return path_fingerprint(self.path)


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


def _decompressed(path: Path) -> IO[bytes]:
    """``path`` opened through the decompressor its first bytes name (or as it is)."""
    import bz2
    import gzip
    import lzma

    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if head.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    return open(path, "rb")  # the caller closes it


def iter_tar_files(
    path: str | os.PathLike[str], wanted: Callable[[str], bool]
) -> Iterator[tuple[str, bytes]]:
    """Stream ``(name, content)`` of a tarball's regular files in archive order.

    One sequential pass (fast for ``.tar.gz`` with many small members); names are
    checked with :func:`check_member_name`; links and special members are skipped,
    never followed.
    """
    try:
        with _decompressed(Path(path)) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                name = check_member_name(m.name, path)
                if not m.isfile() or not wanted(name):
                    continue
                f = tar.extractfile(m)
                if f is not None:
                    yield name, f.read()
            # A tarball cut between two members just ends early for tarfile; reading
            # the compressed stream to its end makes gzip, bz2 and xz say it was cut.
            while stream.read(CHUNK_BYTES):
                pass
    except _BROKEN as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise _broken(path, err, "tarball") from None
