"""Errors in OpenAI's shape, for every way a request can fail, and the body-size limit."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conduit.errors import APIError
from conduit.pipeline import RequestContext
from conduit.pipeline.context import new_id

# Not an HTTP status anyone receives (the client is gone); nginx's code for it, in the log.
CLIENT_CLOSED = 499

log = logging.getLogger("conduit.api")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)


def error_response(request: Request, error: APIError, error_id: str | None = None) -> JSONResponse:
    """The JSON error, with the request's log row written on the way out."""
    record_failure(request, error, error_id)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def record_failure(request: Request, error: APIError, error_id: str | None = None) -> None:
    ctx: RequestContext | None = getattr(request.state, "ctx", None)
    if ctx is None:
        if not request.url.path.startswith(("/v1/", "/admin/")):
            return
        ctx = RequestContext(endpoint=request.url.path, principal=getattr(request.state, "principal", None))
    recorder = getattr(request.app.state, "recorder", None)
    if recorder is not None:
        recorder.finish(ctx, "error", error.status, error.code or error.type, error_id)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, validation_error(exc.errors()))


def validation_error(errors: Any) -> APIError:
    """The first pydantic error as a 400 that names the offending parameter."""
    first = list(errors)[0]
    if first.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request. (Expected valid JSON.)",
                        code="invalid_json")
    location = [part for part in first.get("loc", ()) if part != "body"]
    cause = (first.get("ctx") or {}).get("error")
    param = getattr(cause, "param", None)
    if param is None:
        # Drop pydantic's union-branch labels ('str', 'list[...]') so the path is the user's.
        param = _param_path([p for p in location if isinstance(p, int) or p.isidentifier()])
    if not location and cause is None:
        return APIError(400, "The request body must be a JSON object.", code="invalid_request_body")
    if first.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    message = str(cause) if cause is not None else first.get("msg", "")
    code = getattr(cause, "code", "invalid_value")
    return APIError(400, f"Invalid value for '{param}': {message}" if param else message, param=param or None,
                    code=code)


def _param_path(location: list[Any]) -> str:
    text = ""
    for part in location:
        text += f".[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    message = {404: f"Unknown path: {request.method} {request.url.path}",
               405: f"Method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return error_response(request, APIError(exc.status_code, str(message), code=kinds.get(exc.status_code)))


async def _server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnect):  # gone while its body was read: nothing to answer, no fault of ours
        recorder = getattr(request.app.state, "recorder", None)
        ctx = getattr(request.state, "ctx", None) or RequestContext(
            endpoint=request.url.path, principal=getattr(request.state, "principal", None))
        if recorder is not None and request.url.path.startswith(("/v1/", "/admin/")):
            recorder.finish(ctx, "client_disconnected", CLIENT_CLOSED)
        return Response(status_code=CLIENT_CLOSED)
    error_id = new_id("err")
    log.error("internal error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    error = APIError(500, f"The server had an error while processing your request (error id: {error_id}).",
                     "server_error", code="internal_error")
    return error_response(request, error, error_id)


class BodySizeLimit:
    """413 for bodies over `limit` bytes, by Content-Length or by counting a streamed body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.limit:
                return await self._reject(send)
            # The HTTP server reads exactly Content-Length bytes of body: nothing to count.
            return await self.app(scope, receive, send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # An HTTPException, because FastAPI turns other errors while reading a body into 400s.
                raise HTTPException(413, _too_large(self.limit))
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(self, send: Send) -> None:
        error = APIError(413, _too_large(self.limit), code="request_too_large")
        await JSONResponse(error.body(), status_code=413)({"type": "http"}, _no_receive, send)


def _too_large(limit: int) -> str:
    return f"Request body is larger than the limit of {limit} bytes."


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
