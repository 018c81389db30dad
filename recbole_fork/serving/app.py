"""The HTTP API (FastAPI) over a ``Recommender``.

Endpoints (request bodies are JSON objects; unknown keys are refused):

* ``POST /recommend``: ``{"history": [item ids, oldest first], "k": 10,
  "exclude_history": true, "exclude": [...]}`` or ``{"user_id": ..., "cutoff": "all"}``
  (``recommender`` explains the cutoffs; ``"timestamps"`` go with a history for models that
  read time). Answers ``{"items": [{"item_id", "score"}, ...], "model", "version",
  "elapsed_ms"}``.
* ``POST /recommend/batch``: ``{"requests": [<as /recommend>, ...]}`` -> ``{"results":
  [{"items": [...]}, ...], "model", "version", "elapsed_ms"}``.
* ``POST /items``: ``{"items": [{"item_id": new id, "title": ..., "brand": ...}]}`` (text
  models; 400 otherwise, saying why).
* ``GET /healthz``, ``GET /metadata``.

Every refused request gets a 4xx and ``{"error": "<one line>"}``: 400 for malformed JSON and
for requests that cannot be served (unknown item or user ids, named; an empty history; k out
of range; too many requests in a batch), 413 for a body over the size limit, 422 for a value
of the wrong type or an unknown key, 404 / 405 for unknown paths and methods. A failure of
the server itself is a 500 with one line, and the server goes on.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi import HTTPException as FastAPIHTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from recbole_fork.serving.batching import MicroBatcher, ServerStopping
from recbole_fork.serving.recommender import Query, Ranking, Recommender, RequestError

logger = logging.getLogger(__name__)

ItemId = str | int


@dataclass(frozen=True)
class ServerOptions:
    """The HTTP side's settings.

    Attributes:
        max_batch: most queries per model call (micro-batching).
        max_wait_ms: how long a request waits for others to share its batch.
        max_body_bytes: largest request body (413 beyond).
        max_batch_requests: most requests in one ``/recommend/batch`` call (400 beyond).
    """

    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_body_bytes: int = 1 << 20
    max_batch_requests: int = 1000


class RecommendRequest(BaseModel):
    """One recommendation request (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    history: list[ItemId] | None = None
    timestamps: list[int] | None = None
    query_time: int | None = None
    user_id: ItemId | None = None
    cutoff: Literal["all", "test", "valid"] = "all"
    k: int = 10
    exclude_history: bool = True
    exclude: list[ItemId] = Field(default_factory=list)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest]


class NewItem(BaseModel):
    """A new item: its raw id and its text fields (any names; checked against the model's)."""

    model_config = ConfigDict(extra="allow")

    item_id: ItemId


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[NewItem]


class _BodyTooLarge(FastAPIHTTPException):
    """Raised while the body streams in; FastAPI passes its HTTP exceptions through unchanged
    (any other exception while reading the body would become a 400)."""


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": " ".join(str(message).split())}, status)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before it is parsed
    (by its Content-Length, or while it streams in)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body over the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _error(self._message(), 413)(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(413, self._message())
            return message

        await self.app(scope, limited, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, int]:
    """One line and a status for a request FastAPI could not parse or validate."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg", "")
        return f"malformed JSON: {detail}", 400
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if not loc and first.get("type") == "missing":
        return "the request body must be a JSON object", 400
    where = ".".join(loc) or "body"
    if first.get("type") == "extra_forbidden":
        return f"unknown key {where!r}", 422
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid value')}{more}", 422


def _ranking_json(rank: Ranking) -> list[dict[str, Any]]:
    return [{"item_id": i, "score": s} for i, s in zip(rank.items, rank.scores)]


def create_app(recommender: Recommender, options: ServerOptions | None = None) -> FastAPI:
    """The FastAPI app serving ``recommender`` (see the module docstring).

    The micro-batcher starts and stops with the app (its lifespan); everything that touches
    the model runs on its one model thread. ``options`` default: ``ServerOptions()``.
    """
    options = options or ServerOptions()
    batcher: MicroBatcher[Query, Ranking] = MicroBatcher(
        recommender.recommend, options.max_batch, options.max_wait_ms / 1000.0
    )
    name, version = recommender.servable.run_name, recommender.servable.version

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="recbole_fork serving",
        summary=f"top-k recommendations of {name}",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.recommender = recommender
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> Response:
        return _error(str(exc), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        message, status = _validation_message(exc)
        return _error(message, status)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        return _error(str(exc.detail), exc.status_code)

    @app.exception_handler(ServerStopping)
    async def _stopping(request: Request, exc: ServerStopping) -> Response:
        return _error(str(exc), 503)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        logger.exception("request %s %s failed", request.method, request.url.path)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return _error(f"internal error: {type(exc).__name__}: {first}", 500)

    def resolve(req: RecommendRequest, where: str = "") -> Query:
        try:
            return recommender.resolve(
                history=req.history,
                user_id=req.user_id,
                cutoff=req.cutoff,
                timestamps=req.timestamps,
                query_time=req.query_time,
                k=req.k,
                exclude_history=req.exclude_history,
                exclude=req.exclude,
            )
        except RequestError as e:
            if where:
                raise RequestError(f"{where}: {e}", e.status) from None
            raise

    @app.post("/recommend")
    async def recommend(req: RecommendRequest) -> Response:
        """Top-k items for one history or dataset user."""
        start = time.perf_counter()
        [rank] = await batcher.submit([resolve(req)])
        return _json(
            {
                "items": _ranking_json(rank),
                "model": name,
                "version": version,
                "elapsed_ms": round((time.perf_counter() - start) * 1000, 3),
            }
        )

    @app.post("/recommend/batch")
    async def recommend_batch(req: BatchRequest) -> Response:
        """Many /recommend requests in one call (answers in the same order)."""
        start = time.perf_counter()
        if not req.requests:
            raise RequestError("'requests' is empty: give at least one request")
        if len(req.requests) > options.max_batch_requests:
            raise RequestError(
                f"'requests' holds {len(req.requests)} requests; this server takes at most "
                f"{options.max_batch_requests} per call"
            )
        queries = [resolve(r, f"requests[{i}]") for i, r in enumerate(req.requests)]
        ranks = await batcher.submit(queries)
        return _json(
            {
                "results": [{"items": _ranking_json(r)} for r in ranks],
                "model": name,
                "version": version,
                "elapsed_ms": round((time.perf_counter() - start) * 1000, 3),
            }
        )

    @app.post("/items")
    async def add_items(req: ItemsRequest) -> Response:
        """Add items by their text (text models); they are recommendable at once."""
        start = time.perf_counter()
        rows = [{"item_id": it.item_id, **(it.model_extra or {})} for it in req.items]
        result = await batcher.call(recommender.add_items, rows)
        return _json({**result, "elapsed_ms": round((time.perf_counter() - start) * 1000, 3)})

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the model is loaded and the batcher runs."""
        return _json(
            {
                "status": "ok",
                "model": name,
                "version": version,
                "catalog_size": recommender.n_items - 1,
            }
        )

    @app.get("/metadata")
    async def metadata() -> Response:
        """Model, run, parameter counts, dataset, catalog, offline test metrics, settings."""
        meta = recommender.metadata()
        meta["server"] = {
            "max_batch": options.max_batch,
            "max_wait_ms": options.max_wait_ms,
            "max_body_bytes": options.max_body_bytes,
            "max_batch_requests": options.max_batch_requests,
            "max_k": recommender.limits.max_k,
            "max_history": recommender.limits.max_history,
            "max_new_items": recommender.limits.max_new_items,
            "batches": batcher.batches,
            "queries": batcher.queries,
        }
        return _json(meta)

    return app


__all__ = ["BatchRequest", "ItemsRequest", "RecommendRequest", "ServerOptions", "create_app"]
