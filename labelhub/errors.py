"""The one error type for user-facing failures, raised by actions in every layer.

The message says what is wrong and what to do; `status` is the HTTP status a view
answers with when it has no better idea (400 bad input, 409 a conflict with the
current state). Views may still choose another: a page re-renders its form.
"""
from __future__ import annotations


class ActionError(Exception):
    """A refusal a person should read: bad input, or a state that does not allow the action."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)


class ConflictError(ActionError):
    """The action conflicts with the current state (someone else changed it, or it already happened)."""

    status = 409
