"""The web app of `draem serve`: the JSON API under /api/v1, the review page at / and the OpenAPI docs."""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from draem.errors import DraemError
from draem.serve.batcher import DeadlineExceeded, QueueFull
from draem.serve.page import render_page
from draem.serve.service import Service, StoreFull
from draem.serve.store import Filters
from draem.serve.uploads import UploadError, decode_upload, display_png

API = "/api/v1"
OPEN_PATHS = (f"{API}/health", "/", "/favicon.ico")
STATIC = Path(__file__).parent / "static"
ID_PATTERN = re.compile(r"^[0-9A-Za-z-]{1,64}$")
BROWSER_FORMATS = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
                   "bmp": "image/bmp"}
MAX_TEXT = 200
INSPECT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                   "description": "one or several image files (PNG, JPEG, TIFF, BMP, WebP; 8 or 16 bit)"},
        "source": {"type": "string", "description": "where the images come from (camera, line)"},
        "part_id": {"type": "string", "description": "the inspected part's id"}}}}}}}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    """An HTTP error whose JSON body is {"detail": message}."""
    return HTTPException(status_code=status, detail=message, headers=headers)


class BodyLimit:
    """Refuses inspection requests whose body is over the limit, by Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, path: str, limit: int) -> None:
        self.app, self.path, self.limit = app, path, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"detail": f"request body over the limit of {self.limit} bytes"}, 413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    scope["draem.too_large"] = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        await self.app(scope, limited, send)


class ReviewIn(BaseModel):
    """An operator's verdict on an inspection."""

    verdict: Literal["good", "defective", "unsure"]
    note: str = Field("", max_length=2000)


class ThresholdIn(BaseModel):
    """A new image threshold for the model being served."""

    threshold: float


class ModelIn(BaseModel):
    """A run (or model.pt) path on the server to serve from the next batch on."""

    run: str


def _text_field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise error(400, f"{name}: expected a text field, got a file")
    if len(value) > MAX_TEXT:
        raise error(400, f"{name}: longer than {MAX_TEXT} characters")
    return value


def _time(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise error(400, f"{name}: expected ISO 8601 time or Unix seconds, got {text!r}") from exc
    if moment.tzinfo is None:
        raise error(400, f"{name}: give a time zone (e.g. a trailing Z for UTC)")
    return moment.timestamp()


def _operator(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_TEXT:
        raise error(400, f"X-Operator: longer than {MAX_TEXT} characters")
    return value or None


def create_app(service: Service) -> FastAPI:
    """The app serving one Service; the service starts and stops with the app's lifespan."""
    config = service.config
    max_bytes = int(config.max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="draem serve", version="1", lifespan=lifespan,
                  description="Surface-anomaly inspection of images with a trained draem run. With a token, "
                              "send `Authorization: Bearer TOKEN` on every request but /api/v1/health.")
    app.add_middleware(BodyLimit, path=f"{API}/inspect", limit=config.max_images * max_bytes + 2**20)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if config.token and path not in OPEN_PATHS and not path.startswith("/static/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
                return JSONResponse({"detail": "missing or wrong bearer token"}, 401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in exc.errors())
        return JSONResponse({"detail": problems}, 400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(render_page(service.model.describe(), bool(config.token)))

    @app.get(f"{API}/health", tags=["service"])
    def health() -> JSONResponse:
        """Liveness and readiness (no token needed)."""
        ready = service.batcher.worker.is_alive() and not service.batcher.stopping
        body = {"status": "ok" if ready else "starting or stopping", "ready": ready, "model_loaded": True,
                "model_version": service.model.version, "queue_depth": service.batcher.queued(),
                "queue_capacity": config.queue_depth}
        return JSONResponse(body, 200 if ready else 503)

    @app.get(f"{API}/metrics", tags=["service"])
    def metrics() -> dict[str, Any]:
        """Counts, latency quantiles, queue, webhook outbox and store size."""
        now = time.time()
        store = service.store
        return {**service.metrics.snapshot(), "model_version": service.model.version,
                "uptime_s": round(now - service.started, 1),
                "queue": {"depth": service.batcher.queued(), "capacity": config.queue_depth},
                "inspections": {"last_hour": store.counts_since(now - 3600), "last_day": store.counts_since(
                    now - 86400), "all": store.counts_since(0)},
                "webhook": {"enabled": bool(config.webhook), "pending": store.outbox_size(),
                            "delivered": store.counter("webhook_delivered"),
                            "dropped": store.counter("webhook_dropped")},
                "store": {"path": str(store.root), "file_bytes": store.stored_bytes()}}

    @app.post(f"{API}/inspect", tags=["inspection"], openapi_extra=INSPECT_BODY)
    async def inspect(request: Request, idempotency_key: str | None = Header(None)) -> JSONResponse:
        """Inspect one or several images (multipart fields `images`; optional `source`, `part_id`)."""
        started = time.perf_counter()
        deadline = time.monotonic() + config.deadline_ms / 1000
        if idempotency_key is None:
            return await _inspect(request, deadline, started, None)
        if not 0 < len(idempotency_key) <= MAX_TEXT:
            raise error(400, f"Idempotency-Key: 1 to {MAX_TEXT} characters")
        stored = await run_in_threadpool(service.store.idempotent_response, idempotency_key)
        if stored is not None:
            return JSONResponse(stored, headers={"Idempotent-Replayed": "true"})
        if not service.claim_key(idempotency_key):
            raise error(409, "a request with this Idempotency-Key is in progress; retry after it ends")
        try:
            stored = await run_in_threadpool(service.store.idempotent_response, idempotency_key)
            if stored is not None:
                return JSONResponse(stored, headers={"Idempotent-Replayed": "true"})
            return await _inspect(request, deadline, started, idempotency_key)
        finally:
            service.release_key(idempotency_key)

    async def _inspect(request: Request, deadline: float, started: float, key: str | None) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise error(415, "send the images as multipart/form-data file fields named `images`")
        try:
            form = await request.form(max_files=config.max_images, max_fields=16, max_part_size=2**16)
        except HTTPException as exc:
            if request.scope.get("draem.too_large"):
                raise error(413, "request body over the size limit") from exc
            raise error(400, f"multipart body: {exc.detail}") from exc
        if request.scope.get("draem.too_large"):
            raise error(413, "request body over the size limit")
        try:
            source, part_id = _text_field(form, "source"), _text_field(form, "part_id")
            parts = form.getlist("images")
            if not parts:
                raise error(400, "images: missing; send each image as a multipart file field named `images`")
            uploads = []
            for index, part in enumerate(parts):
                if isinstance(part, str):
                    raise error(400, f"images[{index}]: a text field, not a file")
                name = Path(part.filename or "").name[:MAX_TEXT] or None
                uploads.append((f"images[{index}]" + (f" ({name})" if name else ""),
                                await part.read(max_bytes + 1), name))
        finally:
            await form.close()
        try:
            decoded = await run_in_threadpool(
                lambda: [decode_upload(label, data, name, max_bytes, config.max_pixels)
                         for label, data, name in uploads])
        except UploadError as exc:
            service.metrics.count("rejected_upload")
            raise error(exc.status, str(exc)) from exc
        try:
            futures = service.submit(decoded, deadline)
        except QueueFull as exc:
            service.metrics.count("rejected_queue_full")
            raise error(503, f"busy: {exc}; retry later", {"Retry-After": "1"}) from exc
        try:
            judged = await asyncio.wait_for(asyncio.gather(*map(asyncio.wrap_future, futures)),
                                            max(0.0, deadline - time.monotonic()))
        except (TimeoutError, DeadlineExceeded) as exc:
            for future in futures:
                future.cancel()
            service.metrics.count("deadline_missed")
            raise error(503, f"not inspected within the deadline of {config.deadline_ms:g} ms; retry later",
                        {"Retry-After": "1"}) from exc
        except Exception as exc:  # the model failed on this batch: answered, logged by the batcher
            raise error(500, f"the model failed: {type(exc).__name__}: {exc}") from exc
        try:
            answers = await run_in_threadpool(service.persist, decoded, judged, source, part_id, key)
        except StoreFull as exc:
            raise error(507, str(exc)) from exc
        except (OSError, sqlite3.Error) as exc:
            raise error(500, f"could not store the inspection (nothing was kept): {exc}") from exc
        service.metrics.request_done(time.perf_counter() - started)
        return JSONResponse({"inspections": answers})

    @app.get(f"{API}/inspections", tags=["history"])
    def inspections(decision: Literal["good", "defective", "none"] | None = None,
                    review: Literal["unreviewed", "reviewed", "good", "defective", "unsure"] | None = None,
                    since: str | None = Query(None, description="ISO 8601 time with zone, or Unix seconds"),
                    until: str | None = Query(None, description="ISO 8601 time with zone, or Unix seconds"),
                    source: str | None = None, limit: int = Query(50, ge=1, le=500),
                    offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """A page of inspections, newest first, with each one's latest review."""
        filters = Filters(decision, review, _time("since", since), _time("until", until), source)
        total, items = service.store.inspections(filters, limit, offset)
        return {"total": total, "limit": limit, "offset": offset, "inspections": items}

    def _known(inspection_id: str) -> dict[str, Any]:
        found = service.store.inspection(inspection_id) if ID_PATTERN.match(inspection_id) else None
        if found is None:
            raise error(404, f"inspection {inspection_id!r} not found")
        return found

    @app.get(f"{API}/inspections/{{inspection_id}}", tags=["history"])
    def inspection(inspection_id: str) -> dict[str, Any]:
        """One inspection with its latest review."""
        return _known(inspection_id)

    @app.get(f"{API}/inspections/{{inspection_id}}/{{kind}}", tags=["history"],
             responses={200: {"content": {"image/png": {}}}})
    def inspection_file(inspection_id: str, kind: Literal["image", "map", "overlay", "thumbnail"]) -> Response:
        """The inspected image (as uploaded where browsers show it, else PNG), its 16-bit map, the overlay or the
        overlay's thumbnail (at most 160 px)."""
        _known(inspection_id)
        row = service.store.inspection_row(inspection_id)
        path = service.store.file_path(inspection_id, kind, row["image_ext"])
        if row["files_pruned"] or not path.exists():
            raise error(410, f"inspection {inspection_id}: {kind} removed by retention")
        data = path.read_bytes()
        media = "image/png"
        if kind == "image" and row["image_ext"] in BROWSER_FORMATS:
            media = BROWSER_FORMATS[row["image_ext"]]
        elif kind == "image":
            data = display_png(data)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})

    @app.post(f"{API}/inspections/{{inspection_id}}/review", tags=["history"])
    def review(inspection_id: str, verdict: ReviewIn, x_operator: str | None = Header(None)) -> dict[str, Any]:
        """Record an operator's verdict (good, defective, unsure) and note; X-Operator names the operator."""
        _known(inspection_id)
        service.store.add_review(inspection_id, verdict.verdict, verdict.note, _operator(x_operator))
        return _known(inspection_id)

    @app.get(f"{API}/thresholds", tags=["thresholds"])
    def thresholds() -> dict[str, Any]:
        """The threshold in force for the served model, its history, and the reviewed scores to tune it on."""
        model = service.model
        calibrated = model.thresholds
        return {"model_version": model.version, "threshold": service.active_threshold(model),
                "calibrated_threshold": calibrated.get("image"), "score_low": calibrated.get("image_low"),
                "score_high": calibrated.get("image_high"), "history": service.store.threshold_history(
                    model.version), "reviewed": service.store.reviewed_scores(model.version)}

    @app.post(f"{API}/thresholds", tags=["thresholds"])
    def set_threshold(body: ThresholdIn, x_operator: str | None = Header(None)) -> dict[str, Any]:
        """Set the image threshold for the served model version; new inspections use it."""
        if not math.isfinite(body.threshold):
            raise error(400, "threshold: must be a finite number")
        service.set_threshold(body.threshold, _operator(x_operator))
        return thresholds()

    @app.get(f"{API}/model", tags=["service"])
    def model() -> dict[str, Any]:
        """The model being served."""
        return service.model.describe()

    @app.post(f"{API}/model", tags=["service"])
    def swap_model(body: ModelIn) -> dict[str, Any]:
        """Serve another run (a path on the server) from the next batch on."""
        try:
            return service.swap_model(body.run).describe()
        except (DraemError, OSError) as exc:
            raise error(400, f"run: {exc}") from exc

    return app
