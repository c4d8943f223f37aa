"""The one error a feature definition raises at load time."""

from __future__ import annotations

from pipelines.lang import ParseError as _ParseError  # noqa: F401  (the checker's name for the core's error)
from pipelines.lang import pointer


class FeatureDefinitionError(ValueError):
    """A feature definition is invalid.

    The message names the feature and the reason and, where one is known, the position in the definition
    text (line and column, 1-based) with a caret under it. The parts are also attributes: ``feature``,
    ``reason``, ``text``, ``offset`` (0-based character offset or None), ``line`` and ``column``.
    """

    def __init__(self, feature: str, reason: str, text: str | None = None, offset: int | None = None):
        self.feature = feature
        self.reason = reason
        self.text = text
        self.offset = offset
        self.line: int | None = None
        self.column: int | None = None
        message = f"feature '{feature}': {reason}"
        if text is not None and offset is not None:
            self.line, self.column, where = pointer(text, offset)
            message += where
        super().__init__(message)
