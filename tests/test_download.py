import dataclasses
import hashlib
import io
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import make_category

from draem.data import download as dl
from draem.data.catalog import find_datasets
from draem.errors import DraemError


class Server:
    """A local HTTP server for byte strings that honours `Range: bytes=N-` requests."""

    def __init__(self, files: dict[str, bytes], cut_first_after: int | None = None,
                 honour_range: bool = True) -> None:
        self.files, self.cut_first_after, self.honour_range = files, cut_first_after, honour_range
        self.requests: list[dict[str, str]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                served.requests.append(dict(self.headers))
                body = served.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                asked = self.headers.get("Range")
                if asked and served.honour_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if served.cut_first_after is not None and len(served.requests) == 1:
                    payload = payload[:served.cut_first_after]
                self.wfile.write(payload)

        return Handler


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(files: dict[str, bytes], **options) -> Server:
        servers.append(Server(files, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_of_folder(folder: Path, mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def use_catalogue_entry(monkeypatch, name: str, archive: bytes) -> None:
    entry = dataclasses.replace(dl.CATALOGUE[name], sha256=sha256(archive), size=len(archive))
    monkeypatch.setitem(dl.CATALOGUE, name, entry)


RANDOM = np.random.default_rng(0).bytes(300_000)


def test_dtd_archive_downloads_verifies_extracts_and_second_fetch_is_offline(
        tmp_path, serve, monkeypatch):
    texture = np.random.default_rng(1).bytes(5000)
    archive = tar_bytes({"dtd/images/banded/banded_0001.jpg": texture,
                         "dtd/labels/labels_joint_anno.txt": b"banded/banded_0001.jpg banded\n"})
    use_catalogue_entry(monkeypatch, "dtd", archive)
    server = serve({"dtd-r1.0.1.tar.gz": archive})

    images = dl.fetch_dataset("dtd", tmp_path / "data", base_url=server.base_url, progress=False)

    assert images == tmp_path / "data" / "dtd" / "images"
    assert (images / "banded" / "banded_0001.jpg").read_bytes() == texture
    assert (tmp_path / "data" / "dtd" / dl.MARKER).is_file()
    assert snapshot(tmp_path / "data") == [
        "dtd", f"dtd/{dl.MARKER}", "dtd/images", "dtd/images/banded",
        "dtd/images/banded/banded_0001.jpg", "dtd/labels", "dtd/labels/labels_joint_anno.txt"]
    server.stop()
    assert dl.fetch_dataset("dtd", tmp_path / "data", base_url=server.base_url) == images
    assert len(server.requests) == 1


def test_mvtec_archive_unpacks_to_a_readable_mvtec_root(tmp_path, serve, monkeypatch):
    make_category(tmp_path / "source" / "bottle", train=2, good=1, defects={"broken": 1}, size=16)
    archive = tar_of_folder(tmp_path / "source", "w:xz")
    use_catalogue_entry(monkeypatch, "mvtec", archive)
    server = serve({"mvtec_anomaly_detection.tar.xz": archive})

    root = dl.fetch_dataset("mvtec", tmp_path / "data", base_url=server.base_url, progress=False)

    assert root == tmp_path / "data" / "mvtec_anomaly_detection"
    bottle = find_datasets(root)[0]
    assert bottle.name == "bottle" and len(bottle.train_images()) == 2
    assert [s.defect_type for s in bottle.test_samples()] == ["broken", "good"]
    assert not (tmp_path / "data" / "mvtec_anomaly_detection.tar.xz").exists()


def test_interrupted_download_resumes_with_a_range_request(tmp_path, serve):
    server = serve({"blob": RANDOM}, cut_first_after=70_000)
    dest = dl.download(server.url("blob"), tmp_path / "blob", sha256(RANDOM), len(RANDOM),
                       progress=False)
    assert dest.read_bytes() == RANDOM
    assert "Range" not in server.requests[0]
    assert server.requests[1]["Range"] == "bytes=70000-"
    assert not (tmp_path / "blob.partial").exists()


def test_server_ignoring_range_restarts_the_download(tmp_path, serve):
    (tmp_path / "blob.partial").write_bytes(b"stale bytes from another file")
    server = serve({"blob": RANDOM}, honour_range=False)
    dest = dl.download(server.url("blob"), tmp_path / "blob", sha256(RANDOM), progress=False)
    assert server.requests[0]["Range"] == "bytes=29-"
    assert dest.read_bytes() == RANDOM


def test_complete_partial_file_is_finished_by_a_416_answer(tmp_path, serve):
    (tmp_path / "blob.partial").write_bytes(RANDOM)
    server = serve({"blob": RANDOM})
    dest = dl.download(server.url("blob"), tmp_path / "blob", sha256(RANDOM), progress=False)
    assert server.requests[0]["Range"] == f"bytes={len(RANDOM)}-"
    assert dest.read_bytes() == RANDOM


def test_wrong_checksum_is_refused_and_nothing_is_extracted(tmp_path, serve, monkeypatch):
    archive = tar_bytes({"dtd/images/banded/banded_0001.jpg": b"jpeg"})
    expected = "0" * 64
    entry = dataclasses.replace(dl.CATALOGUE["dtd"], sha256=expected, size=len(archive))
    monkeypatch.setitem(dl.CATALOGUE, "dtd", entry)
    server = serve({"dtd-r1.0.1.tar.gz": archive})
    with pytest.raises(DraemError) as error:
        dl.fetch_dataset("dtd", tmp_path / "data", base_url=server.base_url, progress=False)
    message = str(error.value)
    assert "dtd-r1.0.1.tar.gz" in message and expected in message and sha256(archive) in message
    assert snapshot(tmp_path / "data") == []


def test_size_mismatch_reported_by_the_server_is_refused(tmp_path, serve):
    server = serve({"blob": RANDOM})
    with pytest.raises(DraemError, match=f"offers {len(RANDOM)} bytes, expected 10"):
        dl.download(server.url("blob"), tmp_path / "blob", None, 10, progress=False)


def test_network_errors_name_the_url(tmp_path, serve):
    server = serve({})
    with pytest.raises(DraemError, match=re.escape(server.url("missing")) + r".*HTTP 404"):
        dl.download(server.url("missing"), tmp_path / "x", None, progress=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/x"
    with pytest.raises(DraemError, match=re.escape(closed) + ": download failed") as error:
        dl.download(closed, tmp_path / "x", None, progress=False)
    assert "\n" not in str(error.value)


def test_missing_checksum_warns_and_checks_size(tmp_path, serve):
    server = serve({"blob": RANDOM})
    with pytest.warns(UserWarning, match="only its size was checked"):
        dl.download(server.url("blob"), tmp_path / "blob", None, len(RANDOM), progress=False)


def test_unknown_dataset_and_unfinished_folder_are_errors(tmp_path):
    with pytest.raises(DraemError, match="unknown dataset.*dtd, mvtec"):
        dl.fetch_dataset("imagenet", tmp_path)
    (tmp_path / "dtd").mkdir()
    with pytest.raises(DraemError, match="not a completed dtd download"):
        dl.fetch_dataset("dtd", tmp_path)


def unsafe_tar(tmp_path: Path, kind: str) -> tuple[bytes, str]:
    """A tar whose second member is unsafe; returns it and the unsafe member's name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        good = tarfile.TarInfo("good.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        if kind == "parent":
            bad = tarfile.TarInfo("sub/../../evil")
        elif kind == "absolute":
            bad = tarfile.TarInfo(str(tmp_path / "absolute_evil"))
        elif kind in ("symlink", "relative-symlink", "hardlink"):
            bad = tarfile.TarInfo("link")
            bad.type = tarfile.LNKTYPE if kind == "hardlink" else tarfile.SYMTYPE
            bad.linkname = {"symlink": "/etc", "relative-symlink": "a/../../..",
                            "hardlink": "../outside"}[kind]
        else:
            bad = tarfile.TarInfo("device")
            bad.type = tarfile.CHRTYPE
        bad.size = 0 if bad.type != tarfile.REGTYPE else 4
        tar.addfile(bad, io.BytesIO(b"evil") if bad.type == tarfile.REGTYPE else None)
        if kind == "symlink":
            through = tarfile.TarInfo("link/draem_evil")
            through.size = 4
            tar.addfile(through, io.BytesIO(b"evil"))
    return buffer.getvalue(), bad.name


@pytest.mark.parametrize("kind, problem", [
    ("parent", "leaves the target folder"),
    ("absolute", "absolute path"),
    ("symlink", "symlink to '/etc' points outside"),
    ("relative-symlink", "symlink to 'a/../../..' points outside"),
    ("hardlink", "hard link to '../outside' points outside"),
    ("device", "device file"),
])
def test_unsafe_tar_members_are_refused_and_nothing_is_written(tmp_path, kind, problem):
    data, member = unsafe_tar(tmp_path, kind)
    archive = tmp_path / "archives" / "bad.tar"
    archive.parent.mkdir()
    archive.write_bytes(data)
    (tmp_path / "work").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(DraemError) as error:
        dl.extract(archive, tmp_path / "work" / "target")
    assert str(error.value).startswith(f"{archive}: refusing member {member!r}: ")
    assert problem in str(error.value)
    assert snapshot(tmp_path) == before
    assert not Path("/etc/draem_evil").exists()


def test_unsafe_zip_member_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("ok.txt", "ok")
        zipped.writestr("../evil", "evil")
    (tmp_path / "work").mkdir()
    with pytest.raises(DraemError, match="refusing member '../evil': it leaves the target folder"):
        dl.extract(archive, tmp_path / "work" / "target")
    assert snapshot(tmp_path / "work") == []


@pytest.mark.parametrize("mode, name", [("w", "a.tar"), ("w:gz", "a.tar.gz"),
                                        ("w:bz2", "a.tar.bz2"), ("w:xz", "a.tar.xz"),
                                        ("zip", "a.zip")])
def test_every_archive_format_extracts(tmp_path, mode, name):
    members = {"top/one.txt": b"one", "top/deep/two.bin": RANDOM[:1000]}
    archive = tmp_path / name
    if mode == "zip":
        with zipfile.ZipFile(archive, "w") as zipped:
            for member, data in members.items():
                zipped.writestr(member, data)
    else:
        archive.write_bytes(tar_bytes(members, mode))
    dl.extract(archive, tmp_path / "out")
    for member, data in members.items():
        assert (tmp_path / "out" / member).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out"])


def test_symlink_within_the_target_is_kept(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("images/a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
        link = tarfile.TarInfo("images/b.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(link)
    (tmp_path / "x.tar").write_bytes(buffer.getvalue())
    dl.extract(tmp_path / "x.tar", tmp_path / "out")
    assert (tmp_path / "out" / "images" / "b.txt").is_symlink()
    assert (tmp_path / "out" / "images" / "b.txt").read_bytes() == b"a"


def test_extracting_into_a_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "x.tar").write_bytes(tar_bytes({"a": b"a"}, "w"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(DraemError, match="already exists and is not empty"):
        dl.extract(tmp_path / "x.tar", tmp_path / "out")
    assert snapshot(tmp_path / "out") == ["keep"]
