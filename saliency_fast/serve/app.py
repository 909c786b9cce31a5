"""The HTTP layer (FastAPI): KServe V1 endpoints, auth, body limits, metrics and access logs.

The same app runs on both engines; the engine is its ``backend``: an object with ``name``,
``metrics`` (:class:`ServeMetrics`), ``ready``, ``async start()`` / ``stop()`` and
``async submit(operation, instances, parameters)`` -> one outcome per instance.
"""

from __future__ import annotations

import contextlib
import hmac
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from saliency_fast.serve.config import ServeConfig
from saliency_fast.serve.logs import escape_for_log, log, log_failure
from saliency_fast.serve.protocol import ServeError, parse_request

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")  # probes carry no token
RESPONSE_FIELDS = (("predictions", "prediction"), ("explanations", "explanation"), ("details", "details"))


def create_app(config: ServeConfig, backend) -> FastAPI:
    """The ASGI app serving ``backend`` under ``config``'s limits (``config.token``: auth on)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await backend.start()
        yield
        await backend.stop()  # uvicorn calls this after in-flight requests drained

    app = FastAPI(title="saliency-fast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = backend.metrics

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        path = request.scope["path"]
        if config.token is not None and path not in OPEN_PATHS and not _authorized(request, config.token):
            response = _error(ServeError(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}))
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # noqa: BLE001 - a bug: the caller gets JSON, the log the story
                log_failure(f"{escape_for_log(request.method)} {escape_for_log(path)} failed", exc)
                response = _error(ServeError(500, "internal error"))
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - started
        metrics.observe(endpoint, response.status_code, seconds)
        log.info("%s %s -> %d in %.1f ms", escape_for_log(request.method), escape_for_log(path), response.status_code,
                 1000 * seconds)
        return response

    @app.exception_handler(ServeError)
    async def serve_error(_request, exc: ServeError):
        return _error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return _error(ServeError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return _error(ServeError(400, "invalid request"))

    def check_name(name: str) -> None:
        if name != backend.name:
            raise ServeError(404, "no such model", models=[backend.name])

    @app.get("/v1/models")
    async def models():
        return {"models": [backend.name]}

    @app.get("/v1/models/{name}")
    async def model_ready(name: str):
        check_name(name)
        return {"name": backend.name, "ready": backend.ready}

    async def operate(name: str, request: Request, operation: str) -> JSONResponse:
        check_name(name)
        parsed = parse_request(await _body(request, config.max_body_bytes))
        # the outcomes are JSON values already: JSONResponse skips FastAPI's walk over every score
        return JSONResponse(_answer(await backend.submit(operation, parsed.instances, parsed.parameters)))

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request):
        return await operate(name, request, "predict")

    @app.post("/v1/models/{name}:explain")
    async def explain(name: str, request: Request):
        return await operate(name, request, "explain")

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not backend.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    return app


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest takes as long for every wrong token of a length: no timing oracle
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServeError(400, "Content-Length must be a number of bytes")
        if int(declared) > limit:
            raise ServeError(413, f"the request body is {int(declared)} bytes; the limit is {limit}", limit=limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ServeError(413, f"the request body exceeds the limit of {limit} bytes", limit=limit)
    return bytes(body)


def _answer(outcomes: list) -> dict:
    """The response of a request: its first failed instance's error, else each field its outcomes have
    (``predictions`` always; ``explanations`` for explain, ``details`` for predict)."""
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, ServeError):
            raise ServeError(outcome.status, outcome.message, outcome.headers, instance=index, **outcome.details)
    return {name: [o[key] for o in outcomes] for name, key in RESPONSE_FIELDS if all(key in o for o in outcomes)}


def _error(exc: ServeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
