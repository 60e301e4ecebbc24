"""Type checks that name the field: ``messages[2].tool_calls[0].function.arguments``.

Every check raises :class:`~goose_proxy.errors.InvalidRequest` whose ``param``
is the field path and whose message starts with it, e.g.
``messages[2].content: expected a string or an array of content parts``.
Paths are plain strings built by :func:`at`; the helpers never mutate input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn, Optional

from goose_proxy.errors import InvalidRequest, UnsupportedParameter

from .jsonbody import json_type_name

__all__ = [
    "at",
    "fail",
    "get_bool",
    "get_int",
    "get_number",
    "get_object",
    "get_str",
    "require_list",
    "require_object",
    "require_str",
    "unsupported",
]


def at(path: str, key: object) -> str:
    """Extend a field path by an object key (``str``) or an array index (``int``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def fail(path: str, problem: str) -> NoReturn:
    """Raise InvalidRequest for ``path``.

    Raises:
        InvalidRequest: always.
    """
    raise InvalidRequest(f"{path}: {problem}", param=path)


def unsupported(path: str, problem: str) -> NoReturn:
    """Raise UnsupportedParameter (400, ``code: unsupported_parameter``) for ``path``.

    Raises:
        UnsupportedParameter: always.
    """
    raise UnsupportedParameter(f"{path}: {problem}", param=path)


def _expected(path: str, what: str, value: Any) -> NoReturn:
    fail(path, f"expected {what}, got {json_type_name(value)}")


def require_object(value: Any, path: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object.

    Raises:
        InvalidRequest: it is not.
    """
    if not isinstance(value, Mapping):
        _expected(path, "an object", value)
    return value


#: what a message ``content`` may be, for its error message
CONTENT = "a string or an array of content parts"


def require_list(value: Any, path: str, what: str = "an array") -> list[Any]:
    """``value`` if it is a JSON array (``what`` names what was expected).

    Raises:
        InvalidRequest: it is not.
    """
    if not isinstance(value, list):
        _expected(path, what, value)
    return value


def require_str(value: Any, path: str) -> str:
    """``value`` if it is a string.

    Raises:
        InvalidRequest: it is not.
    """
    if not isinstance(value, str):
        _expected(path, "a string", value)
    return value


def get_str(obj: Mapping[str, Any], key: str, path: str) -> Optional[str]:
    """``obj[key]`` as a string, or None when absent or null.

    Raises:
        InvalidRequest: present with another type.
    """
    value = obj.get(key)
    if value is None:
        return None
    return require_str(value, at(path, key))


def get_object(obj: Mapping[str, Any], key: str, path: str) -> Optional[Mapping[str, Any]]:
    """``obj[key]`` as an object, or None when absent or null.

    Raises:
        InvalidRequest: present with another type.
    """
    value = obj.get(key)
    if value is None:
        return None
    return require_object(value, at(path, key))


def get_bool(obj: Mapping[str, Any], key: str, path: str) -> Optional[bool]:
    """``obj[key]`` as a boolean, or None when absent or null.

    Raises:
        InvalidRequest: present with another type.
    """
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        _expected(at(path, key), "a boolean", value)
    return value


def get_int(
    obj: Mapping[str, Any], key: str, path: str, *, minimum: Optional[int] = None
) -> Optional[int]:
    """``obj[key]`` as an integer (``2.0`` counts, ``true`` does not), or None.

    Raises:
        InvalidRequest: present with another type, or below ``minimum``.
    """
    value = obj.get(key)
    if value is None:
        return None
    where = at(path, key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        _expected(where, "an integer", value)
    if minimum is not None and value < minimum:
        fail(where, f"must be at least {minimum}, got {value}")
    return value


def get_number(obj: Mapping[str, Any], key: str, path: str) -> Optional[float]:
    """``obj[key]`` as a number (int or float, never a boolean), or None.

    The value is returned unchanged (an ``int`` stays an ``int``).

    Raises:
        InvalidRequest: present with another type.
    """
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _expected(at(path, key), "a number", value)
    return value
