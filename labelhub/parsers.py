"""The API's JSON parser: DRF's, with nesting too deep to decode answered 400 instead of 500."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """`rest_framework.parsers.JSONParser` that turns a RecursionError (JSON nested thousands of levels deep,
    which Python's decoder cannot follow) into a 400 like any other malformed body."""

    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
