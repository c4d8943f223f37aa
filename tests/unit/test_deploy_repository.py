"""Triton model configs (``pipelines/deploy/repository.py``, ``pipelines/deploy/triton.py``): built as
tritonclient's ``ModelConfig`` protobuf messages. The text differs in layout from the hand-written templates
they replace; parsed with protobuf's text format, it is the same config (the templates' output is kept here
verbatim as the reference)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from pipelines.deploy.repository import ModelRepositoryError, TensorSpec, python_model_config
from pipelines.deploy.triton import fil_model_config, triton_python_config

# What the string templates wrote, for the same arguments.
TEMPLATE_FIL = (
    'name: "flights_eta"\nbackend: "fil"\nmax_batch_size: 4096\nversion_policy: { latest { num_versions: 1 } }\n'
    'input [\n  {\n    name: "input__0"\n    data_type: TYPE_FP32\n    dims: [ 21 ]\n  }\n]\n'
    'output [\n  {\n    name: "output__0"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n  }\n]\n'
    'instance_group [{ kind: KIND_CPU }]\nparameters [\n'
    '  {\n    key: "model_type"\n    value: { string_value: "xgboost_json" }\n  },\n'
    '  {\n    key: "is_classifier"\n    value: { string_value: "false" }\n  },\n'
    '  {\n    key: "storage_type"\n    value: { string_value: "AUTO" }\n  }\n]\ndynamic_batching { }\n'
)
TEMPLATE_PYTHON = (
    'name: "flights_eta"\nbackend: "python"\nmax_batch_size: 4096\nversion_policy: { latest { num_versions: 1 } }\n'
    'input [\n  {\n    name: "input__0"\n    data_type: TYPE_FP32\n    dims: [ 21 ]\n  }\n]\n'
    'output [\n  {\n    name: "output__0"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n  }\n]\n'
    'instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\ndynamic_batching { }\n'
)
TEMPLATE_EVERY_OPTION = (
    'name: "m-1.x"\nbackend: "python"\nmax_batch_size: 0\nversion_policy: { specific { versions: [1, 3] } }\n'
    'input [\n  {\n    name: "X"\n    data_type: TYPE_FP32\n    dims: [ -1 ]\n  },\n'
    '  {\n    name: "MASK"\n    data_type: TYPE_BOOL\n    dims: [ -1, 3 ]\n    optional: true\n  }\n]\n'
    'output [\n  {\n    name: "Y"\n    data_type: TYPE_FP64\n    dims: [ -1 ]\n  },\n'
    '  {\n    name: "VERSION"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  }\n]\n'
    'instance_group [\n  {\n    count: 2\n    kind: KIND_CPU\n  }\n]\n'
    'parameters: {\n  key: "scale"\n  value: { string_value: "2.0" }\n}\n'
    'parameters: {\n  key: "path"\n  value: { string_value: "a \\"quoted\\" \\\\ value" }\n}\n'
)


def parsed(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def every_option() -> str:
    return python_model_config(
        "m-1.x", [TensorSpec("X", "FP32", [-1]), TensorSpec("MASK", "bool", [-1, 3], optional=True)],
        [TensorSpec("Y", "FP64", [-1]), TensorSpec("VERSION", "STRING", [1])], instance_count=2,
        parameters={"scale": "2.0", "path": 'a "quoted" \\ value'}, version_policy="specific { versions: [1, 3] }")


@pytest.mark.parametrize(("built", "template"), [
    (lambda: fil_model_config("flights_eta", 21), TEMPLATE_FIL),
    (lambda: triton_python_config("flights_eta", 21), TEMPLATE_PYTHON),
    (every_option, TEMPLATE_EVERY_OPTION),
], ids=["fil", "python", "every-option"])
def test_configs_parse_to_the_templates_configs(built, template):
    text = built()
    assert parsed(text) == parsed(template)
    assert text.startswith(template.splitlines()[0] + "\n")  # the model's name first (artifact checks read it)


def test_the_python_config_reads_as_triton_gets_it():
    config = parsed(every_option())
    assert config.parameters["path"].string_value == 'a "quoted" \\ value'
    assert [(t.name, t.optional, list(t.dims)) for t in config.input] == [("X", False, [-1]), ("MASK", True, [-1, 3])]
    assert list(config.version_policy.specific.versions) == [1, 3]


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"outputs": []}, "needs at least one output"),
    ({"inputs": [TensorSpec("Y", "FP32", [1])]}, "tensor names must be unique"),
    ({"instance_count": 0}, "instance_count >= 1"),
    ({"dynamic_batching": True}, "dynamic batching needs max_batch_size > 0"),
    ({"outputs": [TensorSpec("Y", "FP32", [1], optional=True)]}, "only inputs can be optional"),
    ({"version_policy": "newest { }"}, "version_policy 'newest { }'"),
])
def test_bad_configs_name_the_model_and_the_reason(kwargs, reason):
    args = {"inputs": [TensorSpec("X", "FP32", [-1])], "outputs": [TensorSpec("Y", "FP32", [1])], **kwargs}
    with pytest.raises(ModelRepositoryError, match=reason) as info:
        python_model_config("m", **args)
    assert "model 'm'" in str(info.value)
