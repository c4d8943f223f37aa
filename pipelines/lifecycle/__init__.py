"""Model lifecycle (Gallery-style): promotion rules and the stage transition table.

The rule language, its evaluation semantics and the transitions are documented in
:mod:`pipelines.lifecycle.rules`.
"""

# The public API is the one pipelines.lifecycle.rules declares: one list, kept there.
from pipelines.lifecycle.rules import *  # noqa: F403
from pipelines.lifecycle.rules import __all__  # noqa: F401
