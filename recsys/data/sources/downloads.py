"""Fetching one pinned file over HTTP: hashing, verification, atomic download.

- :func:`sha256_file` and :func:`verify_file`: a file's digest, and the check of its
  size and sha256 against pinned values.
- :class:`RemoteFile` and :func:`download`: stream a URL to a temporary file with a
  progress bar, check its size and sha256, then rename it into place atomically.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.data.sources.errors import ChecksumError, DownloadError

__all__ = [
    "CHUNK_BYTES",
    "DOWNLOAD_TIMEOUT_S",
    "RemoteFile",
    "download",
    "error_reason",
    "reuse_or_refuse",
    "sha256_file",
    "verify_file",
]

#: Seconds to wait for a server to answer (connection and each read).
DOWNLOAD_TIMEOUT_S = 30.0
#: Bytes read or copied at a time when hashing, downloading and extracting.
CHUNK_BYTES = 1 << 20


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
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
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
        reuse_or_refuse(final, remote.size, remote.sha256)
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
            raise DownloadError(f"could not reach {remote.url}: {error_reason(err)}") from err
        with response, open(part, "wb") as out, _progress_bar(remote, progress) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, ValueError) as err:  # IncompleteRead, reset, timeout
                    raise DownloadError(
                        f"download of {remote.url} broke off after {received:,} of "
                        f"{remote.size:,} bytes: {error_reason(err)}; the partial file was deleted"
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


def reuse_or_refuse(path: Path, size: int, sha256: str) -> None:
    """Accept a file already in the downloads cache, or refuse it without touching it.

    Our downloads get their final name only once verified, so a file there that does
    not verify was put there by someone else: it is reported, never deleted.

    Raises:
        ChecksumError: naming the file, the digests and what to do with it.

    Example:
        >>> reuse_or_refuse(Path("data/downloads/ml-100k.zip"), 4924029, "50d2...")  # doctest: +SKIP
    """
    try:
        verify_file(path, size, sha256)
    except ChecksumError as err:
        raise ChecksumError(
            f"{err}. That file was not written by recsys (downloads are verified before they "
            f"are renamed into place), so it is left as it is: delete or move {path} to "
            "download again, or pass it as `path=` to read it as a local copy."
        ) from None


def error_reason(err: BaseException) -> str:
    """``"<ExceptionType>: <reason>"`` of a network error, for the route log.

    Example:
        >>> error_reason(ConnectionRefusedError(111, "Connection refused"))
        'ConnectionRefusedError: [Errno 111] Connection refused'
    """
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
