"""The gateway's one error tree. Every error a client can see is one of these.

    GatewayError                      (status, type, code, param)
    ├── InvalidRequestError           400 invalid_request_error
    │   └── ContextLengthExceededError   400 code=context_length_exceeded
    ├── AuthenticationError           401 (missing key: code None; wrong key: invalid_api_key)
    ├── PermissionDeniedError         403
    ├── NotFoundError                 404 (unknown route)
    │   └── ModelNotFoundError        404 code=model_not_found
    ├── MethodNotAllowedError         405
    ├── RequestTimeoutError           408 (a request not sent in time: app.framing)
    ├── ConflictError                 409 (e.g. cancelling a finished batch)
    ├── RequestTooLargeError          413
    ├── HeadersTooLargeError          431 (request line and headers over server.max_header_bytes)
    ├── RateLimitError                429 rate_limit_exceeded
    ├── ClientDisconnectedError       499 (nginx's "client closed request"; never delivered, logged)
    ├── InternalServerError           500 server_error (message never shows internals)
    └── OverloadedError               503 server_error (also: model still loading)

The HTTP layer maps each to OpenAI's envelope in one place (app.api.exception_handlers);
nothing here imports a framework.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: carries what OpenAI's error envelope needs."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"

    def __init__(self, max_tokens: int, requested: int, *, exact: bool = True) -> None:
        # An over-long text is not tokenized whole (app.models.tokenization): then only a
        # lower bound of its length is known, and the message says "at least".
        amount = f"{requested}" if exact else f"at least {requested}"
        super().__init__(
            f"This model's maximum context length is {max_tokens} tokens, however you requested "
            f"{amount} tokens ({amount} in your prompt; 0 for the completion). "
            "Please reduce your prompt; or completion length.",
            param="input",
        )


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "invalid_request_error"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class MethodNotAllowedError(GatewayError):
    status_code = 405
    error_type = "invalid_request_error"


class RequestTimeoutError(GatewayError):
    status_code = 408
    error_type = "invalid_request_error"


class ConflictError(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"


class RequestTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"


class HeadersTooLargeError(GatewayError):
    status_code = 431
    error_type = "invalid_request_error"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"


class ClientDisconnectedError(GatewayError):
    status_code = 499
    error_type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the response was ready.")


class InternalServerError(GatewayError):
    status_code = 500
    error_type = "server_error"

    def __init__(self) -> None:
        super().__init__("The server had an error while processing your request. Sorry about that!")


class OverloadedError(GatewayError):
    status_code = 503
    error_type = "server_error"
