"""The one error a feature definition raises at load time."""

from __future__ import annotations


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
            offset = max(0, min(offset, len(text)))
            self.line = text.count("\n", 0, offset) + 1
            line_start = text.rfind("\n", 0, offset) + 1
            line_end = text.find("\n", offset)
            line_end = len(text) if line_end == -1 else line_end
            self.column = offset - line_start + 1
            source_line = text[line_start:line_end]
            message += f" (line {self.line}, column {self.column})\n    {source_line}\n    {' ' * (self.column - 1)}^"
        super().__init__(message)


class _ParseError(Exception):
    """Internal: raised by the parser and the checker without the feature name; turned into the public error."""

    def __init__(self, reason: str, offset: int | None):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset
