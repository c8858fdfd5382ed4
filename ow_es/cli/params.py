"""Option types whose bad values are usage errors (exit status 2, naming the option)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
import msgspec

from ow_es.durations import to_seconds
from ow_es.limits import Rate

if TYPE_CHECKING:  # generic from click 8.2 on; plain at run time, for click 8.1
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class JsonValue(_ParamType):
    """A JSON document (``'{"a": 1}'``, ``'"text"'``, ``'null'``), decoded."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default, already decoded
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            self.fail(f"not JSON ({exc}): {value!r}", param, ctx)


class Seconds(_ParamType):
    """A duration (``"90s"``, ``"1h"``) or a bare number of seconds, as seconds."""

    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        text = str(value).strip()
        try:
            return to_seconds(float(text) if _is_number(text) else text)
        except ValueError as exc:
            self.fail(str(exc).removeprefix("duration: "), param, ctx)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class RateText(_ParamType):
    """A rate, ``N/PERIOD`` (``"100/1m"``, ``"10/s"``), checked and kept as given."""

    name = "N/PERIOD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        try:
            Rate.parse(text, "rate")
        except ValueError as exc:
            detail = str(exc).removeprefix("rate: ")
            self.fail(
                detail if detail.startswith(repr(text)) else f"{text!r}: {detail}", param, ctx
            )
        return text
