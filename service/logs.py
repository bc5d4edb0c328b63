"""Client errors logged as one line at WARNING, not as an ERROR with a traceback.

BentoML logs every exception of an API call with ``logger.error(..., exc_info=True)``, including a request that
failed validation: a bad upload then fills the log with 20-line tracebacks at ERROR, burying real errors and
tripping alerts on error counts. :class:`ClientErrorFilter` rewrites those records — a pydantic validation
error or a BentoML exception whose status is below 500 — into one WARNING line naming the route and the
problem; everything else passes unchanged.
"""

from __future__ import annotations

import logging

BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


def _client_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    code = getattr(getattr(exc, "error_code", None), "value", None)
    return isinstance(code, int) and 400 <= code < 500


class ClientErrorFilter(logging.Filter):
    """Turn an API exception record caused by the client into one WARNING line (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and _client_error(exc):
            problem = " ".join(str(exc).split())[:300]
            record.msg = f"{record.getMessage()}: client error ({type(exc).__name__}): {problem}"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def install() -> None:
    """Attach the filter to BentoML's HTTP logger once (idempotent)."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())
