"""Client errors become one WARNING line; server errors keep their traceback at ERROR."""

from __future__ import annotations

import logging
import sys

import pytest
from pydantic import BaseModel, ValidationError

from robustdx.service.logs import ClientErrorFilter

pytestmark = pytest.mark.unit


class Form(BaseModel):
    n: int


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/predict", "POST"), info)


def test_a_validation_error_becomes_one_warning_line() -> None:
    try:
        Form(n="x")  # type: ignore[arg-type]
    except ValidationError as err:
        record = _record(err)
    assert ClientErrorFilter().filter(record)
    assert record.levelno == logging.WARNING and record.exc_info is None
    text = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in text and text.startswith("WARNING Exception on /predict [POST]: client error (ValidationError)")


def test_a_bentoml_4xx_is_a_client_error_and_a_5xx_is_not() -> None:
    from bentoml.exceptions import BadInput, InternalServerError

    bad = _record(BadInput("image too large"))
    ClientErrorFilter().filter(bad)
    assert bad.levelno == logging.WARNING and "image too large" in bad.getMessage()
    crash = _record(InternalServerError("boom"))
    ClientErrorFilter().filter(crash)
    assert crash.levelno == logging.ERROR and crash.exc_info is not None
    other = _record(RuntimeError("bug"))
    ClientErrorFilter().filter(other)
    assert other.levelno == logging.ERROR and other.exc_info is not None
