"""Triton python-backend model ``atelier_health``: OUTPUT0 = INPUT0 + 1, plus a RUNTIME report.

This file is copied as ``model.py`` into the model repository by :func:`pipelines.deploy.health.write_health_model`
and only ever imported by Triton's python backend stub (``triton_python_backend_utils`` exists only there). It must
keep to the standard library and numpy, which the serving venv provides.

RUNTIME is one JSON string telling which Python runs the model (executable, prefix, numpy version, pid), so a
health check proves not only that the python backend answers but also that it runs in Atelier's serving venv.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_name = args["model_name"]
        self.model_version = args["model_version"]
        self.runtime = json.dumps(
            {
                "model": self.model_name,
                "version": self.model_version,
                "python": sys.version.split()[0],
                "executable": sys.executable,
                "prefix": sys.prefix,
                "base_prefix": sys.base_prefix,
                "numpy": np.__version__,
                "pid": os.getpid(),
            },
            sort_keys=True,
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (values.astype(np.float32) + np.float32(1.0)))
            runtime = pb_utils.Tensor("RUNTIME", np.array([self.runtime.encode()], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out, runtime]))
        return responses

    def finalize(self):
        pass
