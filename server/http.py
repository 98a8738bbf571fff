"""The HTTP API: health, the stored runs, their images, the models and verifiers.

Every answer is JSON except the image. When the server has an API token, every route but
``/healthz`` needs ``Authorization: Bearer TOKEN`` (else 401). Errors are
``{"error": {"code": ..., "message": ..., "field": ...}}`` with the protocol's codes.

=====================================  ===========================================================
``GET /healthz``                       ``{"status": "ok" | "shutting_down", "server", "models",
                                       "queued", "running"}`` (503 while shutting down)
``GET /api/runs?limit=50&before=N``    ``{"runs": [summary...], "next_before": N | null}``, newest
                                       first; pass ``next_before`` back as ``before`` for the
                                       next page. ``limit`` is 1..200. ``q=WORDS``: only runs
                                       whose prompt holds every word (case-insensitive)
``GET /api/runs/{run_id}``             the summary plus ``parameters``, ``history``, ``elapsed``
                                       and ``error``
``DELETE /api/runs/{run_id}``          forget a finished run (its record, checks, events,
                                       thumbnails and image): ``{"deleted": run_id}``; 409 while
                                       it runs. A browser's request must come from an allowed
                                       origin (as for the WebSocket), else 403
``GET /api/runs/{run_id}/image.png``   the final image (PNG), 404 when there is none
``GET /api/runs/{run_id}/previews``    ``{"previews": [{"step", "seq", "format", "width",
                                       "height", "url"}...]}``: the thumbnail of every check
                                       kept so far (a running run's too), in step order
``GET /api/runs/{run_id}/previews/N``  the thumbnail of the check at step ``N`` (WebP, JPEG or
                                       PNG as the run made it), 404 when there is none
``POST /api/uploads``                  an input image as the raw body (``Content-Type``
                                       ``image/png``, ``image/jpeg`` or ``image/webp``):
                                       ``{"id", "format", "width", "height", "bytes",
                                       "created"}``, 201 when new, 200 when kept already (the id
                                       is the bytes' SHA-256); 413/415/400 with a coded error
                                       (see :mod:`stepwatch.server.uploads`). A browser's
                                       request must come from an allowed origin, else 403
``GET /api/uploads/{id}``              the uploaded image as it was sent, 404 when unknown
``GET /api/models``                    ``{"models": [ModelInfo...]}`` as in ``welcome``
``GET /api/verifiers``                 ``{"verifiers": [VerifierInfo...]}`` as in ``welcome``
=====================================  ===========================================================

A run summary is ``{"number", "run_id", "state", "created_at", "finished_at", "model", "prompt",
"reason", "steps_run", "final_score", "image_url"}``; times are Unix seconds. A run's record
adds ``inputs``: the URL of each input image it names, by role (``image``, ``mask``,
``control_image``). ``state`` is
``queued``, ``running`` or ``finished``; a live run's ``history`` holds its checks so far.

The routes get the narrow :class:`HttpServices` they use (``app.state.http_services``), not the
whole service.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from stepwatch.protocol import ErrorCode, to_json
from stepwatch.protocol import limits as wire
from stepwatch.server.catalog import Catalog
from stepwatch.server.gate import Gate
from stepwatch.server.runs import LiveRun, RunManager
from stepwatch.server.session import OpenSessions
from stepwatch.server.store import RunRecord, RunSummary, Store
from stepwatch.server.uploads import UploadRefused, check_upload, content_format

__all__ = ["HttpServices", "routes"]

DEFAULT_PAGE = 50
MAX_PAGE = 200
MAX_SEARCH_WORDS = 16
MAX_SEARCH_CHARS = 200
#: An oversize upload of at most this many bytes is read to its end before it is refused.
_DRAINED_BYTES = 2 * wire.MAX_UPLOAD_BYTES


def routes() -> list[Route]:
    """The HTTP API's routes."""
    return [
        Route("/healthz", healthz),
        Route("/api/runs", list_runs),
        Route("/api/runs/{run_id}", get_run, methods=["GET", "DELETE"]),
        Route("/api/runs/{run_id}/image.png", get_image),
        Route("/api/runs/{run_id}/previews", list_previews),
        Route("/api/runs/{run_id}/previews/{step:int}", get_preview),
        Route("/api/uploads", post_upload, methods=["POST"]),
        Route("/api/uploads/{upload_id}", get_upload),
        Route("/api/models", list_models),
        Route("/api/verifiers", list_verifiers),
    ]


def _error(status: int, code: ErrorCode, message: str, field: str | None = None) -> JSONResponse:
    body = {"error": {"code": code.value, "message": message, "field": field}}
    return JSONResponse(body, status_code=status)


@dataclass(frozen=True, slots=True)
class HttpServices:
    """What the HTTP routes use of the service, and nothing more."""

    #: ``/healthz``'s ``server``.
    name: str
    gate: Gate
    catalog: Catalog
    runs: RunManager
    store: Store
    #: The open sessions; their ``closing`` says whether the server is shutting down.
    sessions: OpenSessions


def _service(request: Request) -> HttpServices:
    services: HttpServices = request.app.state.http_services
    return services


def _refusal(request: Request) -> JSONResponse | None:
    if _service(request).gate.http_authorized(request.headers):
        return None
    return _error(401, ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <API token>")


async def healthz(request: Request) -> JSONResponse:
    service = _service(request)
    body = {
        "status": "shutting_down" if service.sessions.closing else "ok",
        "server": service.name,
        "models": list(service.catalog.models),
        **service.runs.counts(),
    }
    return JSONResponse(body, status_code=503 if service.sessions.closing else 200)


def _page_arguments(request: Request) -> tuple[int, int | None] | JSONResponse:
    try:
        limit = int(request.query_params.get("limit", DEFAULT_PAGE))
        before_text = request.query_params.get("before")
        before = int(before_text) if before_text is not None else None
    except ValueError:
        return _error(400, ErrorCode.INVALID_VALUE, "limit and before are integers")
    if not 1 <= limit <= MAX_PAGE:
        return _error(400, ErrorCode.INVALID_VALUE, f"limit is 1..{MAX_PAGE}", "limit")
    return limit, before


async def list_runs(request: Request) -> Response:
    if (refusal := _refusal(request)) is not None:
        return refusal
    arguments = _page_arguments(request)
    if isinstance(arguments, JSONResponse):
        return arguments
    limit, before = arguments
    service = _service(request)
    words = request.query_params.get("q", "").strip()
    if len(words) > MAX_SEARCH_CHARS or len(words.split()) > MAX_SEARCH_WORDS:
        return _error(
            400,
            ErrorCode.INVALID_VALUE,
            f"q is at most {MAX_SEARCH_WORDS} words, {MAX_SEARCH_CHARS} characters",
            "q",
        )
    if words:
        summaries = await service.store.search_runs(words, limit + 1, before)
    else:
        summaries = await service.store.list_runs(limit + 1, before)
    page = summaries[:limit]
    next_before = page[-1].number if len(summaries) > limit else None
    return JSONResponse(
        {
            "runs": [_summary_json(summary, service.runs.live(summary.run_id)) for summary in page],
            "next_before": next_before,
        }
    )


async def get_run(request: Request) -> Response:
    if (refusal := _refusal(request)) is not None:
        return refusal
    if request.method == "DELETE":
        return await delete_run(request)
    service = _service(request)
    run_id = request.path_params["run_id"]
    record = await service.store.run_record(run_id)
    if record is None:
        return _error(404, ErrorCode.UNKNOWN_RUN, f"no run {run_id[:64]!r} is known", "run_id")
    return JSONResponse(_record_json(record, service.runs.live(run_id)))


def _foreign_origin(request: Request, what: str) -> JSONResponse | None:
    origin = request.headers.get("origin")
    if origin is not None and not _service(request).gate.origin_allowed(
        origin, request.headers.get("host", "")
    ):
        return _error(403, ErrorCode.FORBIDDEN, f"origin {origin[:100]} may not {what}")
    return None


async def delete_run(request: Request) -> Response:
    service = _service(request)
    if (refusal := _foreign_origin(request, "delete runs")) is not None:
        return refusal
    run_id = request.path_params["run_id"]
    live = service.runs.live(run_id)
    if live is not None and not live.finished:
        return _error(
            409, ErrorCode.INVALID_VALUE, f"run {run_id} has not finished; stop it first", "run_id"
        )
    if not await service.store.delete_run(run_id):
        return _error(404, ErrorCode.UNKNOWN_RUN, f"no run {run_id[:64]!r} is known", "run_id")
    return JSONResponse({"deleted": run_id})


async def get_image(request: Request) -> Response:
    if (refusal := _refusal(request)) is not None:
        return refusal
    run_id = request.path_params["run_id"]
    path = _service(request).store.image_path(run_id)
    if path is None:
        return _error(404, ErrorCode.UNKNOWN_RUN, f"run {run_id[:64]!r} has no image")
    return FileResponse(path, media_type="image/png")


async def list_previews(request: Request) -> Response:
    if (refusal := _refusal(request)) is not None:
        return refusal
    run_id = request.path_params["run_id"]
    previews = await _service(request).store.previews(run_id)
    base = f"/api/runs/{run_id}/previews"
    listed = [{**dataclasses.asdict(item), "url": f"{base}/{item.step}"} for item in previews]
    return JSONResponse({"previews": listed})


async def get_preview(request: Request) -> Response:
    if (refusal := _refusal(request)) is not None:
        return refusal
    run_id, step = request.path_params["run_id"], request.path_params["step"]
    found = await _service(request).store.preview_image(run_id, step)
    if found is None:
        return _error(404, ErrorCode.UNKNOWN_RUN, f"run {run_id[:64]!r} has no preview at {step}")
    image_format, data = found
    # A kept thumbnail never changes: the browser may keep it.
    headers = {"Cache-Control": "private, max-age=86400, immutable"}
    return Response(data, media_type=f"image/{image_format}", headers=headers)


async def _upload_body(request: Request) -> bytes:
    """The request's body, kept no further than the upload limit.

    An oversize body is refused; up to twice the limit it is read on and dropped, so that the
    sender, still sending, gets the answer instead of a reset connection.
    """
    declared = request.headers.get("content-length", "")
    too_large = UploadRefused(
        413, ErrorCode.UPLOAD_TOO_LARGE, f"an upload is at most {wire.MAX_UPLOAD_BYTES} bytes"
    )
    if declared.isdigit() and int(declared) > _DRAINED_BYTES:
        raise too_large
    body = bytearray()
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > _DRAINED_BYTES:
            break
        if seen <= wire.MAX_UPLOAD_BYTES:
            body += chunk
    if seen > wire.MAX_UPLOAD_BYTES:
        raise too_large
    return bytes(body)


async def post_upload(request: Request) -> Response:
    if (refusal := _refusal(request) or _foreign_origin(request, "upload")) is not None:
        return refusal
    store = _service(request).store
    try:
        content_type = request.headers.get("content-type")
        content_format(content_type)  # refuse a foreign type before reading its body
        data = await _upload_body(request)
        upload = await anyio.to_thread.run_sync(check_upload, data, content_type)
    except UploadRefused as exc:
        return _error(exc.status, exc.code, exc.message, exc.field)
    created = await store.keep_upload(upload)
    body = {
        "id": upload.id,
        "format": upload.format,
        "width": upload.width,
        "height": upload.height,
        "bytes": len(upload.data),
        "created": created,
    }
    return JSONResponse(body, status_code=201 if created else 200)


async def get_upload(request: Request) -> Response:
    if (refusal := _refusal(request)) is not None:
        return refusal
    upload_id = request.path_params["upload_id"]
    upload = await _service(request).store.upload(upload_id)
    if upload is None:
        return _error(404, ErrorCode.UNKNOWN_UPLOAD, f"no upload {upload_id[:64]!r} is kept", "id")
    # An upload's id is the hash of its bytes: it never changes.
    headers = {"Cache-Control": "private, max-age=86400, immutable"}
    return Response(upload.data, media_type=f"image/{upload.format}", headers=headers)


async def list_models(request: Request) -> Response:
    if (refusal := _refusal(request)) is not None:
        return refusal
    infos = _service(request).catalog.model_infos
    return JSONResponse({"models": [to_json(info) for info in infos]})


async def list_verifiers(request: Request) -> Response:
    if (refusal := _refusal(request)) is not None:
        return refusal
    infos = _service(request).catalog.verifier_infos
    return JSONResponse({"verifiers": [to_json(info) for info in infos]})


def _summary_json(summary: RunSummary, live: LiveRun | None) -> dict[str, Any]:
    state = live.state if live is not None else summary.state
    return {
        "number": summary.number,
        "run_id": summary.run_id,
        "state": state,
        "created_at": summary.created_at,
        "finished_at": summary.finished_at if state == "finished" else None,
        "model": summary.model,
        "prompt": summary.prompt,
        "reason": summary.reason if state == "finished" else None,
        "steps_run": summary.steps_run,
        "final_score": summary.final_score,
        "image_url": f"/api/runs/{summary.run_id}/image.png" if summary.has_image else None,
    }


def _record_json(record: RunRecord, live: LiveRun | None) -> dict[str, Any]:
    body = _summary_json(record.summary, live)
    history = record.history
    if live is not None and not live.finished:
        history = tuple(live.history)
    body.update(
        parameters=to_json(record.parameters),
        elapsed=record.elapsed,
        error=to_json(record.error),
        history=to_json(history),
        inputs={
            role: f"/api/uploads/{upload_id}"
            for role in ("image", "mask", "control_image")
            if (upload_id := getattr(record.parameters, role)) is not None
        },
    )
    return body
