"""Fetch the paper's public datasets: resumable HTTP download, checksum, safe extraction."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from tqdm import tqdm

from draem.errors import DraemError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
MAX_RESUMES = 20
MARKER = ".draem-download-complete"
USER_AGENT = "draem-dataset-download/0.1 (python urllib)"


@dataclass(frozen=True)
class Source:
    """Where a dataset archive lives, how to check it, and what it unpacks to."""

    url: str
    sha256: str | None
    size: int | None
    folder: str
    """Folder created under the download folder."""
    archive_root: str
    """Folder inside the archive that becomes `folder` ('' when the archive has no top folder)."""
    contents: str
    """Sub-folder of `folder` that draem reads ('' for `folder` itself)."""
    expected: str
    """A path inside `folder` that a correct unpacking always has."""

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CATALOGUE: dict[str, Source] = {
    "mvtec": Source(
        url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
            "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        size=5_264_982_680,
        folder="mvtec_anomaly_detection", archive_root="", contents="",
        expected="bottle/train/good",
    ),
    "dtd": Source(
        url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        sha256="e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205",
        size=625_239_812,
        folder="dtd", archive_root="dtd", contents="images",
        expected="images/banded",
    ),
}


def _reason(error: BaseException) -> str:
    """A one-line description of a network failure."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return " ".join(str(error).split()) or type(error).__name__


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes START-END/TOTAL` header."""
    match = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _stream(url: str, partial: Path, expected_size: int | None, progress: bool) -> None:
    """One request: continue `partial` where it ends, or restart it when the server sends it all."""
    offset = _size(partial)
    if expected_size is not None and offset >= expected_size:
        return
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            return
        raise
    with response:
        if response.status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset:
                raise DraemError(f"{url}: server resumed at byte {start}, asked for {offset}")
        else:
            offset = 0
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header is not None else None
        total = offset + length if length is not None else None
        if expected_size is not None and total is not None and total != expected_size:
            raise DraemError(f"{url}: server offers {total} bytes, expected {expected_size}")
        received = 0
        with partial.open("ab" if offset else "wb") as out, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=partial.name.removesuffix(".partial"), disable=not progress) as bar:
            while block := response.read(CHUNK_BYTES):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if length is not None and received < length:
        raise ConnectionError(f"connection closed after {received} of {length} bytes")


def _verify(path: Path, label: str, sha256: str | None, expected_size: int | None) -> None:
    """Check size and sha256; a mismatch deletes `path` and raises."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        path.unlink()
        raise DraemError(f"{label}: {size} bytes, expected {expected_size}; "
                         "the download was deleted, run again to fetch it afresh")
    if sha256 is None:
        warnings.warn(f"{label}: no published sha256 for this file; only its size was checked",
                      stacklevel=3)
        return
    actual = file_sha256(path)
    if actual != sha256.lower():
        path.unlink()
        raise DraemError(f"{label}: sha256 mismatch (expected {sha256.lower()}, got {actual}); "
                         "the download was deleted")


def download(url: str, dest: Path, sha256: str | None, expected_size: int | None = None,
             progress: bool = True) -> Path:
    """Fetch `url` to `dest` via `dest.partial` (resumed with Range), verified before renaming."""
    dest = Path(dest)
    if dest.exists():
        _verify(dest, str(dest), sha256, expected_size)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    if expected_size is not None:
        free = shutil.disk_usage(dest.parent).free
        if free < expected_size - _size(partial):
            raise DraemError(f"{dest.parent}: {free} bytes free, the download needs "
                             f"{expected_size - _size(partial)}")
    for _ in range(MAX_RESUMES):
        before = _size(partial)
        try:
            _stream(url, partial, expected_size, progress)
            break
        except (OSError, http.client.HTTPException) as error:
            if _size(partial) <= before:
                raise DraemError(f"{url}: download failed ({_reason(error)})") from error
    else:
        raise DraemError(f"{url}: connection kept breaking off; run again to resume {partial}")
    _verify(partial, str(dest), sha256, expected_size)
    partial.replace(dest)
    return dest


def _within(root: Path, path: Path) -> bool:
    """True when a normalised path is `root` or below it."""
    return path == root or root in path.parents


def _inside(root: Path, name: str, archive: Path) -> Path:
    """Where member `name` lands under `root`, or a DraemError naming it when it leaves `root`."""
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or os.path.isabs(name):
        raise DraemError(f"{archive}: refusing member {name!r}: absolute path")
    target = Path(os.path.normpath(root / name))
    if not _within(root, target):
        raise DraemError(f"{archive}: refusing member {name!r}: it leaves the target folder")
    return target


def _tar_filter(archive: Path, root: Path) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    """A tarfile extraction filter: our own checks (naming the member), then the 'data' filter."""

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        where = _inside(root, member.name, archive)
        if member.ischr() or member.isblk() or member.isfifo():
            raise DraemError(f"{archive}: refusing member {member.name!r}: device file or pipe")
        if member.issym():
            pointee = Path(os.path.normpath(where.parent / member.linkname))
            if os.path.isabs(member.linkname) or not _within(root, pointee):
                raise DraemError(f"{archive}: refusing member {member.name!r}: "
                                 f"symlink to {member.linkname!r} points outside the target folder")
        if member.islnk() and not _within(root, Path(os.path.normpath(root / member.linkname))):
            raise DraemError(f"{archive}: refusing member {member.name!r}: "
                             f"hard link to {member.linkname!r} points outside the target folder")
        return tarfile.data_filter(member, dest)

    return check


def _extract_tar(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(root, filter=_tar_filter(archive, root))
    except tarfile.FilterError as error:
        raise DraemError(f"{archive}: refusing member {error.tarinfo.name!r}: {error}") from error
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DraemError(f"{archive}: cannot unpack ({_reason(error)})") from error


def _extract_zip(archive: Path, root: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                _inside(root, info.filename, archive)
            zipped.extractall(root)
    except (zipfile.BadZipFile, OSError) as error:
        raise DraemError(f"{archive}: cannot unpack ({_reason(error)})") from error


def extract(archive: Path, to: Path) -> None:
    """Unpack a tar (plain, gz, xz, bz2) or zip archive into `to`, refusing unsafe members.

    Members go to a temporary folder beside `to`, which is renamed to `to` only when complete.
    """
    archive, to = Path(archive), Path(to).absolute()
    if not archive.is_file():
        raise DraemError(f"{archive}: archive not found")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise DraemError(f"{to}: already exists and is not empty; remove it or choose another")
    to.parent.mkdir(parents=True, exist_ok=True)
    staging = to.parent / f".{to.name}.extracting"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        if archive.name.lower().endswith(".zip") or not tarfile.is_tarfile(archive):
            if not zipfile.is_zipfile(archive):
                raise DraemError(f"{archive}: not a tar or zip archive")
            _extract_zip(archive, staging)
        else:
            _extract_tar(archive, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if to.exists():
        to.rmdir()
    staging.rename(to)


def fetch_dataset(name: str, to: Path, base_url: str | None = None, keep_archive: bool = False,
                  progress: bool = True) -> Path:
    """Download, verify and unpack a catalogued dataset under `to`; returns the folder to use.

    A second call finds the completion marker and returns without network access. `base_url`
    replaces everything before the archive name in the catalogued URL (a mirror, or a test server).
    """
    source = CATALOGUE.get(name.lower())
    if source is None:
        raise DraemError(f"{name}: unknown dataset (available: {', '.join(sorted(CATALOGUE))})")
    to = Path(to)
    folder = to / source.folder
    result = folder / source.contents if source.contents else folder
    if (folder / MARKER).is_file():
        return result
    if folder.exists():
        raise DraemError(f"{folder}: exists but is not a completed {name} download; "
                         "remove it or choose another folder")
    url = f"{base_url.rstrip('/')}/{source.archive}" if base_url else source.url
    archive = download(url, to / source.archive, source.sha256, source.size, progress)
    staging = to / f".{source.folder}.unpacked"
    if staging.exists():
        shutil.rmtree(staging)
    extract(archive, staging)
    unpacked = staging / source.archive_root if source.archive_root else staging
    if not (unpacked / source.expected).exists():
        shutil.rmtree(staging)
        raise DraemError(f"{archive}: unexpected contents, "
                         f"{Path(source.archive_root or '.') / source.expected} is missing")
    (unpacked / MARKER).write_text(f"{url}\nsha256 {source.sha256}\n")
    unpacked.rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    return result
