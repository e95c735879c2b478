"""Signaling errors. Each has a stable ``code`` (the contract clients see) and an HTTP status;
``signaling.app`` maps them to ``{"error": {"code", "message"}}`` in one place."""

from __future__ import annotations


class SignalingError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(SignalingError):
    code = "bad_request"
    status = 400


class InvalidJson(SignalingError):
    code = "invalid_json"
    status = 400


class Unauthorized(SignalingError):
    code = "unauthorized"
    status = 401


class Forbidden(SignalingError):
    code = "forbidden"
    status = 403


class NotFound(SignalingError):
    code = "not_found"
    status = 404


class SessionNotFound(NotFound):
    code = "session_not_found"


class InvalidToken(SignalingError):
    code = "invalid_token"
    status = 401


class TokenExpired(InvalidToken):
    code = "token_expired"


class SessionFull(SignalingError):
    code = "session_full"
    status = 409


class SessionEnded(SignalingError):
    code = "session_ended"
    status = 410


class UnknownMessageType(SignalingError):
    code = "unknown_message_type"


class NotJoined(SignalingError):
    code = "not_joined"


class MessageTooLarge(SignalingError):
    code = "message_too_large"
    status = 413


class RateLimited(SignalingError):
    """Too many requests; ``retry_after`` seconds until the next one is allowed."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(SignalingError):
    """The server is stopping; the client should reconnect (to this or another instance)."""

    code = "shutting_down"
    status = 503
