"""Throughput and latency of `draem serve` under 1, 4 and 16 concurrent clients, next to offline `draem predict`.

    python benchmarks/serve.py                           # narrow DRAEM (32/16) at 256 px, 200 images per C
    python benchmarks/serve.py --preset full --record    # the paper's DRAEM (128/64), into docs/results/serve.json
    python benchmarks/serve.py --run RUN --images 400    # a trained run

Starts the service on loopback (queue deeper than the clients' images, deadline out of the way), warms it up,
then sends at least --images single-image requests from C concurrent clients (keep-alive connections) and
prints images/s, p50/p99 latency, errors, the clients' own CPU use (they share the machine) and the service's.
Offline `predict` runs on the same images with the same backend and precision and writes the same outputs (maps,
overlays, masks) at the service's batch size and at batch size 1. A last row repeats C=1 with a webhook whose
receiver is down. Rows in the store are counted against acknowledged responses. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # predict's progress bars would garble the table

import torch
from results import machine, write_study
from speed import random_images

from draem import methods
from draem.engine.predict import PredictConfig, predict
from draem.engine.run import ModelInfo, save_model

SIZE = 256
THRESHOLDS = {"image": 0.5, "image_low": 0.0, "image_high": 1.0, "pixel": 0.5, "pixel_low": 0.0, "pixel_high": 1.0}


def random_run(folder: Path, preset: str) -> Path:
    """A DRAEM run of a preset's size with random weights (speed does not depend on them) and placeholder
    thresholds."""
    draem = methods.get("draem")
    model = draem(draem.Options(**methods.preset_options("draem", preset)))
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / "model.pt", model, ModelInfo.of(model, SIZE, thresholds=THRESHOLDS))
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(run: Path, store: Path, args: argparse.Namespace, *extra: str) -> tuple[subprocess.Popen, int]:
    """`draem serve` on loopback, once ready; (process, port)."""
    port = free_port()
    command = [sys.executable, "-m", "draem", "serve", "--run", str(run), "--store", str(store), "--port", str(port),
               "--device", args.device, "--precision", args.precision, "--backend", args.backend,
               "--batch-size", str(args.batch_size), "--batch-wait-ms", str(args.batch_wait_ms),
               "--queue-depth", "1024", "--deadline-ms", "600000", *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    until = time.monotonic() + 300
    while time.monotonic() < until:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/api/v1/health")
            if json.loads(connection.getresponse().read())["ready"]:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the service did not start")


def body(data: bytes) -> tuple[bytes, str]:
    """A multipart body with one image; (body, content type)."""
    boundary = uuid.uuid4().hex
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="i.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode(),
            f"multipart/form-data; boundary={boundary}")


def load(port: int, payloads: list[bytes], clients: int, total: int) -> dict:
    """`total` single-image requests from `clients` threads; latencies, errors, acknowledged ids, CPU."""
    latencies: list[float] = []
    acknowledged: list[str] = []
    errors = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for number in range(index, total, clients):
            data, kind = body(payloads[number % len(payloads)])
            started = time.perf_counter()
            try:
                connection.request("POST", "/api/v1/inspect", data, {"Content-Type": kind})
                response = connection.getresponse()
                answer = response.read()
            except OSError:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                with lock:
                    errors[0] += 1
                continue
            elapsed = time.perf_counter() - started
            with lock:
                if response.status == 200:
                    latencies.append(elapsed)
                    acknowledged.extend(item["id"] for item in json.loads(answer)["inspections"])
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    cpu_before, started = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"wall": wall, "latencies": sorted(latencies), "errors": errors[0], "ids": acknowledged,
            "client_cpu": (time.process_time() - cpu_before) / wall}


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def offline(run: Path, paths: list[Path], out: Path, args: argparse.Namespace, batch_size: int) -> float:
    """Seconds of `draem predict` over the images (after a warm-up on a few), writing maps, overlays and masks."""
    settings = {"run": str(run), "device": args.device, "precision": args.precision, "backend": args.backend,
                "batch_size": batch_size}
    predict(PredictConfig(inputs=[str(p) for p in paths[:batch_size]], out=str(out / "warm"), **settings))
    started = time.perf_counter()
    predict(PredictConfig(inputs=[str(p) for p in paths], out=str(out / f"b{batch_size}"), **settings))
    return time.perf_counter() - started


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run (default: a random DRAEM of --preset at 256 px)")
    parser.add_argument("--preset", default="narrow", help="DRAEM's size: full (128/64), narrow (32/16), demo")
    parser.add_argument("--record", action="store_true", help="write the rows to docs/results/serve-PRESET.json")
    parser.add_argument("--images", type=int, default=200, help="requests per client count (one image each)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="draem-serve-bench-"))
    run = Path(args.run) if args.run else random_run(work / "run", args.preset)
    paths = random_images(work / "images", args.images)
    payloads = [path.read_bytes() for path in paths]
    print(f"CPU: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: {run}{'' if args.run else f' (DRAEM {args.preset}, random weights)'}, {SIZE} px, "
          f"{args.device} / {args.precision} / {args.backend}, service batch {args.batch_size}, "
          f"wait {args.batch_wait_ms:g} ms; {args.images} single-image requests per row")

    offline_batch = offline(run, paths, work / "offline", args, args.batch_size)
    offline_single = offline(run, paths, work / "offline", args, 1)
    offline_rate = len(paths) / offline_batch
    per_image_ms = 1000 * offline_single / len(paths)
    print(f"offline predict --batch-size {args.batch_size}: {offline_rate:.2f} images/s; "
          f"--batch-size 1: {per_image_ms:.1f} ms per image")

    print(f"\n{'clients':>16} {'images/s':>9} {'x offline':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>7} "
          f"{'errors':>6} {'client CPU':>10} {'service CPU':>11} {'rows=acks':>9}")
    medians: dict[str, float] = {}
    table = []
    for label, clients, extra in [*((str(c), c, ()) for c in args.clients),
                                  ("1, webhook down", 1, ("--webhook", f"http://127.0.0.1:{free_port()}/down"))]:
        store = work / f"store-{len(medians)}"
        process, port = serve(run, store, args, *extra)
        try:
            load(port, payloads, max(clients, 4), 4 * max(clients, 4))
            with sqlite3.connect(store / "history.db") as connection:
                warm_rows = connection.execute("SELECT COUNT(*) FROM inspections").fetchone()[0]
            service_before = process_cpu_seconds(process.pid)
            result = load(port, payloads, clients, args.images)
            service_cpu = (process_cpu_seconds(process.pid) - service_before) / result["wall"]
        finally:
            process.terminate()
            process.wait(timeout=120)
        with sqlite3.connect(store / "history.db") as connection:
            rows = connection.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] - warm_rows
        ids = result["ids"]
        latencies = result["latencies"]
        rate = len(ids) / result["wall"]
        p50, p99 = 1000 * statistics.median(latencies), 1000 * quantile(latencies, 0.99)
        medians[label] = p50
        consistent = "yes" if rows == len(ids) == len(set(ids)) else f"no ({rows}/{len(ids)})"
        print(f"{label:>16} {rate:9.2f} {rate / offline_rate:9.2f} {p50:8.1f} {p99:8.1f} {p99 / p50:7.2f} "
              f"{result['errors']:6d} {result['client_cpu']:9.3f}c {service_cpu:10.2f}c {consistent:>9}")
        table.append({"clients": label, "images_per_s": rate, "offline_ratio": rate / offline_rate, "p50_ms": p50,
                     "p99_ms": p99, "errors": result["errors"], "client_cpu": result["client_cpu"],
                     "service_cpu": service_cpu, "rows_equal_acks": consistent,
                     "p50_over_offline_single": p50 / per_image_ms})
    if "1" in medians:
        print(f"\nC=1 median / offline per image (batch 1): {medians['1'] / per_image_ms:.2f}; "
              f"webhook down moves the C=1 median by {100 * (medians['1, webhook down'] / medians['1'] - 1):+.1f} %")
    print("client and service CPU: cores busy on average during the row (c)")
    if args.record:
        model = "a trained run" if args.run else f"DRAEM {args.preset} (random weights)"
        notes = (f"{model}, {SIZE} px, {args.device} / {args.precision} / {args.backend}, service batch "
                 f"{args.batch_size}, {args.images} single-image requests per row; offline predict "
                 f"{offline_rate:.2f} images/s at batch {args.batch_size}, {per_image_ms:.1f} ms per image at "
                 "batch 1. CPU columns: cores busy on average during the row.")
        columns = [("clients", "clients"), ("images_per_s", "images/s"), ("offline_ratio", "× offline"),
                   ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p50_over_offline_single", "p50 / offline b1"),
                   ("errors", "errors"), ("client_cpu", "client CPU"), ("service_cpu", "service CPU"),
                   ("rows_equal_acks", "rows = acks")]
        print(f"recorded in {write_study(f'serve-{args.preset}', 'draem serve', columns, table, notes)}")


if __name__ == "__main__":
    main()
