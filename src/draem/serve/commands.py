"""Command-line parts of `draem serve` and `draem reviews export` (FastAPI and uvicorn load only when serving)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from draem.engine.devices import PRECISIONS
from draem.engine.inference import BACKENDS
from draem.errors import DraemError

log = logging.getLogger("draem")

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_serve(commands: argparse._SubParsersAction) -> None:
    """The `serve` command's arguments."""
    p = commands.add_parser("serve", help="serve a run over HTTP: inspection API, review page, history",
                            description="An inspection service for a trained run: POST images to /api/v1/inspect, "
                                        "review them on the page at /, API docs at /docs. Binds 127.0.0.1 by "
                                        "default; any other host needs --token (or DRAEM_TOKEN).")
    p.add_argument("--run", required=True, help="run directory (or model.pt) to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--store", help="folder of the history database and stored images (default: RUN/serve)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="inference backend, as for predict")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="fp32, bf16 or auto (bf16 where native)")
    p.add_argument("--batch-size", type=int, default=8, help="most images scored in one forward pass")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long the first image of a batch waits for more")
    p.add_argument("--queue-depth", type=int, default=64, help="images waiting at most; beyond, 503 + Retry-After")
    p.add_argument("--deadline-ms", type=float, default=10000.0,
                   help="an inspection not scored within this time answers 503")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest image file accepted")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="largest image accepted, in pixels")
    p.add_argument("--max-images", type=int, default=16, help="most images in one request")
    p.add_argument("--token", help="bearer token required on every request but /api/v1/health "
                                   "(default: DRAEM_TOKEN; prefer it, command lines are visible to other users)")
    p.add_argument("--keep-days", type=float, help="delete images and maps older than this (rows stay)")
    p.add_argument("--max-store-mb", type=float, help="delete the oldest images and maps beyond this size")
    p.add_argument("--watch", help="also inspect image files that appear in this folder, each once")
    p.add_argument("--webhook", help="POST each decision as JSON to this URL (at least once, with retries)")
    p.add_argument("--webhook-only-defective", action="store_true", help="post only defective decisions")


def positive_settings(args: argparse.Namespace) -> None:
    """Refuse settings that cannot work, in one line."""
    for name in ("batch_size", "queue_depth", "max_images", "max_pixels", "deadline_ms", "max_upload_mb"):
        if getattr(args, name) <= 0:
            raise DraemError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    if args.batch_wait_ms < 0:
        raise DraemError(f"--batch-wait-ms {args.batch_wait_ms}: must not be negative")


def run_serve(args: argparse.Namespace) -> None:
    """Start the service and serve until SIGTERM or Ctrl-C (queued images are finished first)."""
    token = args.token or os.environ.get("DRAEM_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise DraemError(f"--host {args.host}: serving beyond this machine needs --token or DRAEM_TOKEN")
    positive_settings(args)
    import uvicorn

    from draem.serve.app import create_app
    from draem.serve.service import ServeConfig, Service

    config = ServeConfig(
        run=args.run, store=args.store, host=args.host, port=args.port, device=args.device,
        precision=args.precision, backend=args.backend, batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait_ms, queue_depth=args.queue_depth, deadline_ms=args.deadline_ms,
        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, max_images=args.max_images, token=token,
        keep_days=args.keep_days, max_store_mb=args.max_store_mb, watch=args.watch, webhook=args.webhook,
        webhook_only_defective=args.webhook_only_defective)
    service = Service(config)
    log.info("serving %s (model %s) on http://%s:%d/ ; store %s%s", args.run, service.model.version,
             args.host, args.port, config.store_path, "; token required" if token else "")
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=int(config.deadline_ms / 1000) + 30)


def add_reviews(commands: argparse._SubParsersAction) -> None:
    """The `reviews` command's arguments."""
    p = commands.add_parser("reviews", help="work with the operators' reviews of a serve store")
    actions = p.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write reviewed images as good/ and defective/ plus manifest.csv",
                                description="Latest review per inspection; 'unsure' is left out. `draem test "
                                            "--normal OUT/good --abnormal OUT/defective` evaluates on them.")
    export.add_argument("--store", required=True, help="the serve store (default of serve: RUN/serve)")
    export.add_argument("--out", required=True, help="folder to write good/, defective/ and manifest.csv into")


def run_reviews(args: argparse.Namespace) -> None:
    """Export the reviews of a store."""
    from draem.serve.exporter import export_reviews

    counts = export_reviews(args.store, args.out)
    print(f"{args.out}: {counts.good} good and {counts.defective} defective images; left out {counts.unsure} "
          f"unsure and {counts.pruned} whose files retention removed")
