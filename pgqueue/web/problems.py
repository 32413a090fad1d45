"""Errors as the API returns them: a 4xx (or 5xx) with a JSON body saying what is wrong and, for bad input,
which field and why. Nothing is written when a request is refused.

::

    {"error": "invalid_request", "message": "priority: must be at most 32767",
     "fields": [{"field": "priority", "location": "body", "message": "must be at most 32767"}]}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pgqueue.errors import DatabaseUnavailable, JobNotFound, PgQueueError, SchemaNotMigrated, ValidationError

log = logging.getLogger("pgqueue.web")


class FieldProblem(BaseModel):
    field: str
    location: str
    message: str


class Problem(BaseModel):
    """The body of every error response."""

    error: str
    message: str
    fields: list[FieldProblem] = []


class ApiError(Exception):
    """Raise in a handler to answer ``status`` with a Problem body."""

    def __init__(self, status: int, error: str, message: str, fields: list[FieldProblem] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.fields = fields or []


def invalid(field: str, message: str, location: str = "body") -> ApiError:
    """A 422 naming one field: ``raise invalid("run_at", "must have a timezone")``."""
    return ApiError(422, "invalid_request", f"{field}: {message}", [FieldProblem(field=field, location=location,
                                                                                  message=message)])


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(message: str) -> ApiError:
    return ApiError(409, "conflict", message)


def _respond(status: int, problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem.model_dump(), status_code=status, headers=headers)


def _field_problem(err: dict[str, Any]) -> FieldProblem:
    # pydantic names the branch of a union (or a validator) inside loc, e.g. "list[...]": not a field.
    loc = [str(part) for part in err.get("loc", ()) if not ("[" in str(part) or str(part).startswith("function-"))]
    if err.get("type") == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = str(err.get("ctx", {}).get("error", "")).strip()
        return FieldProblem(field="body", location="body",
                            message=f"is not valid JSON{': ' + reason if reason else ''}{where}")
    location = loc[0] if loc and loc[0] in {"body", "query", "path", "header", "cookie"} else "body"
    path = loc[1:] if loc and loc[0] == location else loc
    message = str(err.get("msg", "is invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return FieldProblem(field=".".join(path) or location, location=location, message=message)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into a Problem response."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return _respond(err.status, Problem(error=err.error, message=err.message, fields=err.fields), headers)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        fields = [_field_problem(e) for e in err.errors()]
        if not fields:
            fields = [FieldProblem(field="body", location="body", message="is invalid")]
        message = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
        return _respond(422, Problem(error="invalid_request", message=message, fields=fields))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        names = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}
        headers = dict(getattr(err, "headers", None) or {})
        if err.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return _respond(err.status_code, Problem(error=names.get(err.status_code, "http_error"),
                                                 message=str(err.detail)), headers)

    @app.exception_handler(PgQueueError)
    async def pgqueue_error(_: Request, err: PgQueueError) -> JSONResponse:
        if isinstance(err, JobNotFound):
            return _respond(404, Problem(error="not_found", message=str(err)))
        if isinstance(err, ValidationError):
            return _respond(422, Problem(error="invalid_request", message=str(err)))
        if isinstance(err, DatabaseUnavailable | SchemaNotMigrated):
            return _respond(503, Problem(error="unavailable", message=str(err)))
        log.error("database error: %s", err)
        return _respond(500, Problem(error="database_error", message=str(err)))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


# OpenAPI: the error responses every operation may give, documented with the Problem body.
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Bad request", 401: "Missing or unknown token", 403: "Token lacks the scope",
            404: "Not found", 409: "Conflict with the resource's state", 413: "Request body too large",
            422: "Invalid input: the body says which field and why",
            503: "Database unavailable"}
    return {s: {"model": Problem, "description": text[s]} for s in sorted({400, *statuses})}
