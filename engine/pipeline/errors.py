"""Errors raised while a channel runs, carrying what an AE's ERR segment needs."""

from __future__ import annotations

# HL7 table 0357 codes the pipeline uses.
TABLE_VALUE_NOT_FOUND = 103
APPLICATION_ERROR = 207


class StepError(Exception):
    """A step could not do its work on this message.

    `field` is the field path involved (for ERR-2), `code` an HL7 table 0357 code. The text
    must never quote message content: it goes back to the sender and into logs.
    """

    def __init__(
        self, text: str, *, field: str = "", code: int = APPLICATION_ERROR, detail: str = ""
    ) -> None:
        super().__init__(text)
        self.text = text
        self.field = field
        self.code = code
        # Kept in the store only (it may quote content); never sent back or logged.
        self.detail = detail


class StepFiltered(Exception):
    """A step decided there is nothing to send for this message, which is not an error.

    The channel's outcome becomes `filtered` with `reason` kept as its error text, so
    `engine show` says why. Like a StepError's text, the reason goes into the store and the
    logs: it names fields and states, never message content.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
