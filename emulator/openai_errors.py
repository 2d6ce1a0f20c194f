"""The data plane's error answers in OpenAI's shape, and request validation that yields them.

`validated` turns the first pydantic error into one OpenAI-style answer: the offending
parameter by its path (`messages[0].content`), a code (`missing_required_parameter`,
`invalid_type`, `empty_array`, ...) and a sentence naming both, as OpenAI words them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from emulator.openai_models import MISSING_CONTENT, ErrorDetail, OpenAIError

ModelT = TypeVar("ModelT", bound=BaseModel)

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "float_type": "a number",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")
_SHOW_MAX_CHARS = 60


class WireError(Exception):
    """An OpenAI-style error answer: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return OpenAIError(error=detail).model_dump()


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> WireError:
    return WireError(400, message, code=code, param=param)


def validated(model: type[ModelT], body: dict[str, Any]) -> ModelT:
    """`body` as `model`, or a 400 `WireError` for its first problem."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _from_pydantic(exc.errors(include_url=False)[0]) from None


def param_of(loc: Sequence[int | str]) -> str:
    """`("messages", 0, "content")` as `messages[0].content`; union tags (`<...>`) left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("<"):
            out += f".{part}" if out else part
    return out


def _from_pydantic(error: Mapping[str, Any]) -> WireError:
    param = param_of(error["loc"]) or None
    name = f"'{param}'" if param else "the request body"
    message, code = _WORDING.get(str(error["type"]), _invalid)(name, error)
    return bad_request(message, param, code)


# Each pydantic error type as OpenAI words it: (message, code).
Wording = Callable[[str, Mapping[str, Any]], tuple[str, str]]


def _missing(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    return f"Missing required parameter: {name}.", "missing_required_parameter"


def _wrong_type(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    # A union told apart by JSON type (`invalid_type`) says itself what it expected.
    expected = _EXPECTED.get(str(error["type"]))
    wanted = f"expected {expected}" if expected else str(error["msg"])
    return f"Invalid type for {name}: {wanted}.", "invalid_type"


def _empty_array(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    least = (error.get("ctx") or {}).get("min_length", 1)
    return (f"Invalid {name}: empty array. Expected an array with minimum length {least}.",
            "empty_array")


def _too_long(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    ctx = error.get("ctx") or {}
    return (f"Invalid {name}: array too long. Expected an array with maximum length"
            f" {ctx.get('max_length')}, but got an array with length {ctx.get('actual_length')}"
            " instead.", "array_above_max_length")


def _empty_string(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    return f"Invalid {name}: empty string.", "empty_string"


def _below(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    number = "integer" if isinstance(error.get("input"), int) else "decimal"
    least = (error.get("ctx") or {}).get("ge")
    return (f"Invalid {name}: {number} below minimum value. Expected a value >= {least},"
            f" but got {_show(error.get('input'))} instead.", f"{number}_below_min_value")


def _above(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    number = "integer" if isinstance(error.get("input"), int) else "decimal"
    most = (error.get("ctx") or {}).get("le")
    return (f"Invalid {name}: {number} above maximum value. Expected a value <= {most},"
            f" but got {_show(error.get('input'))} instead.", f"{number}_above_max_value")


def _unsupported(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    supported = (error.get("ctx") or {}).get("expected")
    return (f"Invalid value for {name}: {_show(error.get('input'))}. Supported values are:"
            f" {supported}.", "invalid_value")


def _invalid(name: str, error: Mapping[str, Any]) -> tuple[str, str]:
    return f"Invalid {name}: {_plain(str(error['msg']))}.", "invalid_value"


_WORDING: dict[str, Wording] = {
    "missing": _missing,
    MISSING_CONTENT: _missing,
    "invalid_type": _wrong_type,
    **dict.fromkeys(_EXPECTED, _wrong_type),
    "too_short": _empty_array,
    "too_long": _too_long,
    "string_too_short": _empty_string,
    "greater_than_equal": _below,
    "less_than_equal": _above,
    "literal_error": _unsupported,
}


def _plain(message: str) -> str:
    for prefix in _PYDANTIC_PREFIXES:
        message = message.removeprefix(prefix)
    return message


def _show(value: Any) -> str:
    """A short rendering of a given value: a long one is cut."""
    text = repr(value)
    return text if len(text) <= _SHOW_MAX_CHARS else text[:_SHOW_MAX_CHARS] + "…"
