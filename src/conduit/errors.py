"""The error every layer raises for the client: turned into OpenAI's error body by the API."""

from __future__ import annotations


class APIError(Exception):
    """`{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_loading(model: str) -> APIError:
    """503 for a model whose weights are not loaded yet (a server that has just started)."""
    return APIError(503, f"Model '{model}' is still loading; GET /readyz answers 200 once it is ready.",
                    "service_unavailable", code="model_loading", headers={"Retry-After": "5"})
