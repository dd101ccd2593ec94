"""Failure exceptions that travel from workers to clients; Django-free and picklable."""


class FaaSException(Exception):
    """Base of the platform's own failures; takes a single message so it round-trips through dill."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class WorkerFailureException(FaaSException):
    """Raised when the process or worker running a task died, missed heartbeats,
    overran its deadline or was cancelled; the message says which."""


class FunctionFailedException(FaaSException):
    """Raised when a payload could not become a call (does not unpickle, is not
    callable) or the result could not be serialized or is over the size cap."""


class ProtocolError(Exception):
    """Raised when a message between dispatcher and worker is malformed."""


class PayloadError(ValueError):
    """Raised when a client payload is not base64 of exactly one pickle stream."""


class PayloadTooLarge(PayloadError):
    """Raised when a payload is over the configured size cap."""


class SoftTimeLimitExceeded(FaaSException):
    """Raised inside a running function when its soft time limit passes, so it can clean up
    (as Celery's exception of the same name); uncaught, it FAILS the task. The hard
    deadline still kills the process later."""
