"""The learner's HTTP API, version 1: ``create_app(learner, token)`` → a FastAPI app.

Every answer is JSON (the page and the metrics aside); every error is
``{"error": "<one line>"}`` with a 4xx for what a client can fix and a 5xx otherwise. The
learner's calls block (SQLite commits, torch), so they run in the thread pool.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from edgecl.errors import EdgeclError, InputError, one_line
from edgecl.service import metrics
from edgecl.service.exporting import ExportUnavailable, NothingToExport, export_snapshot
from edgecl.service.forms import images_of, read_form, read_upload
from edgecl.service.limits import BearerToken, BodyLimit
from edgecl.service.page import CSP, PAGE

log = logging.getLogger("edgecl.service")
API_VERSION = 1
ENDPOINTS = ("GET /", "GET /v1/status", "GET /v1/history", "GET /v1/metrics",
             "POST /v1/samples", "POST /v1/predict", "POST /v1/checkpoint", "POST /v1/export")


def error(status: int, message: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def create_app(learner: Any, token: str | None = None, *,
               max_body_mib: float | None = None) -> FastAPI:
    """The API over ``learner``; with ``token`` every request but ``GET /`` needs
    ``Authorization: Bearer <token>``. The body limit defaults to the learner's
    ``service.max_body_mib``."""
    app = FastAPI(title="edgecl learner", version=str(API_VERSION), docs_url=None,
                  redoc_url=None, openapi_url=None)
    limit = max_body_mib if max_body_mib is not None else learner.cfg.service.max_body_mib
    app.add_middleware(BodyLimit, max_bytes=int(limit * 2**20))
    if token is not None:
        app.add_middleware(BearerToken, token=token)  # added last: runs first
    add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"cache-control": "no-store",
                                           "content-security-policy": CSP})

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(learner.status)

    @app.get("/v1/history")
    async def history() -> dict[str, Any]:
        return await run_in_threadpool(learner.history)

    @app.get("/v1/metrics")
    async def prometheus() -> Response:
        def both() -> tuple[dict[str, Any], dict[str, Any]]:
            return learner.status(), learner.history()

        text = metrics.render(*await run_in_threadpool(both))
        return Response(text, media_type=metrics.CONTENT_TYPE)

    @app.post("/v1/samples")
    async def samples(request: Request) -> dict[str, Any]:
        try:
            upload = await read_upload(request)
        finally:
            await request.close()  # the form's spooled files
        ids = await run_in_threadpool(learner.add, upload.images, upload.labels, upload.keys)
        return {"accepted": len(ids), "ids": ids}

    @app.post("/v1/predict")
    async def predict(request: Request, response: Response,
                      top: int | None = Query(None, ge=1, le=1000)) -> dict[str, Any]:
        began = time.perf_counter()
        try:
            images = await images_of(await read_form(request, ("image",)))
        finally:
            await request.close()
        timings = {"read": time.perf_counter() - began}
        answer = await run_in_threadpool(learner.predict, images, top, timings)
        timings["total"] = time.perf_counter() - began
        response.headers["Server-Timing"] = server_timing(timings)
        return answer

    @app.post("/v1/checkpoint")
    async def checkpoint() -> dict[str, Any]:
        saved = await run_in_threadpool(learner.checkpoint)
        return {**saved, "path": str(learner.state_dir / "checkpoint.pt")}

    @app.post("/v1/export")
    async def export() -> dict[str, Any]:
        return await run_in_threadpool(export_snapshot, learner)

    return app


def server_timing(seconds: dict[str, float]) -> str:
    """A ``Server-Timing`` header (W3C) of a request's parts, in milliseconds."""
    return ", ".join(f"{name};dur={1e3 * s:.1f}" for name, s in seconds.items())


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message = f"unknown endpoint {where}; the endpoints are {', '.join(ENDPOINTS)}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                 for e in exc.errors()]
        return error(400, "; ".join(parts) or "invalid request")

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> JSONResponse:
        return error(400, exc)

    @app.exception_handler(ExportUnavailable)
    async def unavailable(request: Request, exc: ExportUnavailable) -> JSONResponse:
        return error(501, exc)

    @app.exception_handler(NothingToExport)
    async def conflict(request: Request, exc: NothingToExport) -> JSONResponse:
        return error(409, exc)

    @app.exception_handler(EdgeclError)
    async def learner_error(request: Request, exc: EdgeclError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return error(500, exc)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}: {exc}")
