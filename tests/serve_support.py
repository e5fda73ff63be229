"""Shared pieces of the `draem serve` tests: a tiny trained run, services on it, images as bytes."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from draem import methods
from draem.engine.run import ModelInfo, save_model
from draem.serve.app import create_app
from draem.serve.service import ServeConfig, Service

THRESHOLDS = {"method": "test", "image": 0.53, "image_low": 0.47, "image_high": 0.68, "pixel": 0.5,
              "pixel_low": 0.37, "pixel_high": 0.74}


@contextmanager
def single_threaded() -> Iterator[None]:
    """Torch on one thread: tiny models gain nothing from more, and on a machine shared with other work a
    second thread waiting at every barrier makes each forward pass hundreds of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every serve test module runs torch on one thread (imported into each module)."""
    with single_threaded():
        yield


def make_run(folder: Path, seed: int = 0, calibrated: bool = True) -> Path:
    """A run folder holding an untrained tiny DRAEM (widths 4, 32 px) whose batch-norm statistics are set on
    random images, so that scores vary: noise scores above THRESHOLDS["image"], flat grey below."""
    with single_threaded():
        return _save_tiny_run(folder, seed, calibrated)


def _save_tiny_run(folder: Path, seed: int, calibrated: bool) -> Path:
    torch.manual_seed(seed)
    model = methods.get("draem")(methods.get("draem").Options(recon_width=4, seg_width=4))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, 3, 32, 32) * torch.rand(8, 1, 1, 1))
    info = ModelInfo.of(model, 32, thresholds=dict(THRESHOLDS) if calibrated else {})
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / "model.pt", model, info)
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run for the serve tests."""
    return make_run(tmp_path_factory.mktemp("serve") / "run")


def encode(array: np.ndarray, mode: str | None = None, image_format: str = "PNG") -> bytes:
    """An array (H, W, 3) uint8 encoded as an image file, optionally converted to a PIL mode first."""
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    stream = io.BytesIO()
    image.save(stream, format=image_format)
    return stream.getvalue()


def noisy(seed: int = 0, size: int = 32) -> bytes:
    """A PNG of black-and-white noise: the tiny run calls it defective."""
    return encode((np.random.default_rng(seed).integers(0, 2, (size, size, 3)) * 255).astype(np.uint8))


def flat(value: int = 120, size: int = 40) -> bytes:
    """A PNG of one grey level: the tiny run calls it good."""
    return encode(np.full((size, size, 3), value, np.uint8))


def config_for(run: Path, store: Path, **settings: Any) -> ServeConfig:
    """A service configuration for tests: CPU, fp32, short batching wait."""
    return ServeConfig(run=str(run), store=str(store), device="cpu", precision="fp32", batch_wait_ms=2.0,
                       **settings)


@contextmanager
def serving(run: Path, store: Path, **settings: Any) -> Iterator[tuple[TestClient, Service]]:
    """A started service and a client of its app; stopped (queue drained) when the block ends."""
    service = Service(config_for(run, store, **settings))
    with TestClient(create_app(service)) as client:
        yield client, service


def inspect(client: TestClient, *images: bytes, headers: dict[str, str] | None = None,
            **fields: str) -> Any:
    """POST images to /api/v1/inspect; the response."""
    files = [("images", (f"part{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post("/api/v1/inspect", files=files, data=fields, headers=headers or {})


class GatedPredictor:
    """A predictor that waits for a gate to open before each forward pass (to hold the batcher busy)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.loaded = predictor.loaded
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, images: Any, valid: Any) -> Any:
        self.entered.set()
        self.gate.wait(timeout=30)
        return self.predictor(images, valid)


def stored_files(store: Path) -> list[Path]:
    """Every file under a store's files/ folder."""
    return sorted(p for p in (store / "files").rglob("*") if p.is_file())


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(run: Path, store: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`draem serve` in a subprocess, once its health answers."""
    log = store.parent / f"serve-{port}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "draem", "serve", "--run", str(run), "--store",
                                    str(store), "--port", str(port), "--device", "cpu", "--precision", "fp32",
                                    *extra], stdout=output, stderr=subprocess.STDOUT,
                                   env={**(env or os.environ), "OMP_NUM_THREADS": "1"})
    until = time.monotonic() + 60
    while time.monotonic() < until:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1) as answer:
                if json.load(answer)["ready"]:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the service did not start")


def post(port: int, images: list[bytes], headers: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """POST images; (status, ids), status 0 when the connection failed."""
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{i}.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for i, data in enumerate(images))
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/inspect", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, [item["id"] for item in json.load(answer)["inspections"]]
    except urllib.error.HTTPError as exc:
        return exc.code, []
    except OSError:
        return 0, []


class Receiver:
    """A webhook receiver on loopback that records every event it gets."""

    def __init__(self, port: int = 0) -> None:
        self.events: list[dict] = []
        self.headers: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append(json.loads(body))
                receiver.headers.append(self.headers["X-Draem-Event-Id"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Wait until a condition holds (an assertion error after `seconds`)."""
    until = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.02)
