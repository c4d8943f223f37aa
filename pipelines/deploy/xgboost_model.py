"""Triton python-backend model: an Atelier model bundle's XGBoost booster, ``inplace_predict`` (no DMatrix).

Copied as ``model.py`` into ``<repository>/<name>/<version>/`` by :func:`pipelines.deploy.export_python_model`,
beside the bundle's ``model.json``; only Triton's python-backend stub imports it (serving venv: numpy<2,
xgboost). Tensors use the FIL backend's names (``input__0`` FP32 [batch, n_features] -> ``output__0`` FP32
[batch, 1]), so the prediction API speaks to this model and to the cluster's FIL model alike. With dynamic
batching, Triton hands ``execute`` several requests at once: their rows go through one ``inplace_predict``
call (its fixed per-call cost dominates single rows), on one thread.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
import xgboost


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.booster = xgboost.Booster()
        self.booster.load_model(str(folder / "model.json"))
        # One thread: a row costs ~0.1 ms either way, and on a busy machine OpenMP's second thread waits for a
        # core at every call (p95 of one row: 0.14 ms with nthread=1, 12 ms with 2 on two shared cores).
        # Dynamic batching still amortizes the per-call cost under load.
        self.booster.set_param({"nthread": 1})
        self.n_features = int(config["input"][0]["dims"][0])
        if self.booster.num_features() != self.n_features:
            raise ValueError(f"model.json has {self.booster.num_features()} features, config.pbtxt says "
                             f"{self.n_features}")
        # The first call pays XGBoost's lazy set-up: do it here, not on a request.
        self.booster.inplace_predict(np.zeros((1, self.n_features), dtype=np.float32))

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "input__0").as_numpy() for r in requests]
        rows = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        # Margins (the raw sum of trees): a regressor's prediction, a binary classifier's log-odds, which the API
        # turns into calibrated probabilities (pipelines/models/classification.py).
        predictions = np.asarray(self.booster.inplace_predict(rows, predict_type="margin"),
                                 dtype=np.float32).reshape(-1, 1)
        responses, start = [], 0
        for array in arrays:
            end = start + array.shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("output__0", predictions[start:end])]))
            start = end
        return responses

    def finalize(self):
        self.booster = None
