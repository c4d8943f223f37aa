"""The function registry of the feature language and the language reference agree."""

from __future__ import annotations

import re

import pytest

from pipelines.features import dsl
from pipelines.features.functions import AGGREGATIONS, FUNCTIONS

BORDER = "=" * 29 + "  " + "=" * 70


def reference_table() -> dict[str, str]:
    """{function name: description} of the function rows of the table in the dsl docstring (operator rows
    left out), descriptions with their continuation lines joined."""
    doc = dsl.__doc__
    start = doc.index(BORDER) + len(BORDER)
    body = doc[start:doc.index(BORDER, start)].strip("\n").split("\n")
    rows: list[list[str]] = []
    for line in body:
        if line.startswith(" "):
            rows[-1][1] += " " + line.strip()
        else:
            rows.append([line[:32].strip(), line[32:].strip()])
    table = {}
    for first, text in rows:
        m = re.fullmatch(r"``([a-z_0-9]+)\(.*\)``", first)
        if m:
            assert m.group(1) not in table, f"{m.group(1)} has two rows"
            table[m.group(1)] = text
    return table


def test_the_reference_table_lists_every_function_with_its_registry_doc():
    table = reference_table()
    assert sorted(table) == sorted(FUNCTIONS)
    for name, fn in FUNCTIONS.items():
        assert table[name] == " ".join(fn.doc.split()), name


@pytest.mark.parametrize("name", sorted(FUNCTIONS.keys() | AGGREGATIONS.keys()))
def test_each_signature_names_its_function(name):
    fn = FUNCTIONS.get(name) or AGGREGATIONS[name]
    assert fn.name == name and fn.signature.startswith(f"{name}("), fn.signature


def test_aggregations_are_documented():
    section = dsl.__doc__[dsl.__doc__.index("Window aggregations\n"):]
    for name in AGGREGATIONS:
        assert f"``{name}(" in section, name
