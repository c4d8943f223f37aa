"""The model call: Triton over a kept-alive HTTP connection (tritonclient's asyncio client), short timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from pipelines.deploy.triton import INPUT, OUTPUT

__all__ = ["TritonModel", "TritonUnavailable"]


class TritonUnavailable(RuntimeError):
    """Triton did not answer in time, refused, or the model version is not loaded; ``kind`` says which."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class TritonModel:
    """One model version on Triton. Create inside the running event loop (the HTTP session belongs to it)."""

    def __init__(self, url: str, name: str, version: str, n_features: int, *, conn_limit: int = 32) -> None:
        import tritonclient.http.aio as aio

        self._aio = aio
        self.url, self.name, self.version, self.n_features = url, name, str(version), n_features
        # The session's total timeout is a backstop; each call has its own (shorter) budget.
        self.client = aio.InferenceServerClient(url, conn_limit=conn_limit, conn_timeout=10.0)
        self._output = [aio.InferRequestedOutput(OUTPUT, binary_data=True)]

    async def predict(self, matrix: np.ndarray, timeout_s: float) -> np.ndarray:
        """Point predictions for a float32 [rows, n_features] matrix; TritonUnavailable on any failure."""
        from tritonclient.utils import InferenceServerException

        inp = self._aio.InferInput(INPUT, list(matrix.shape), "FP32")
        inp.set_data_from_numpy(matrix, binary_data=True)
        try:
            async with asyncio.timeout(timeout_s):
                result = await self.client.infer(self.name, [inp], model_version=self.version, outputs=self._output)
        except TimeoutError:
            raise TritonUnavailable("timeout", f"Triton did not answer within {timeout_s * 1e3:.0f} ms") from None
        except InferenceServerException as exc:
            text = str(exc)
            kind = "model_missing" if ("unknown model" in text or "not found" in text or "unavailable" in text
                                       or "is not ready" in text) else "error"
            raise TritonUnavailable(kind, f"Triton refused: {text.splitlines()[0][:200]}") from None
        except Exception as exc:  # noqa: BLE001 - connection refused/reset, server gone: all mean "not usable"
            raise TritonUnavailable("unreachable", f"Triton at {self.url} unreachable: {type(exc).__name__}") from None
        out = result.as_numpy(OUTPUT)
        if out is None or out.shape[0] != matrix.shape[0]:
            raise TritonUnavailable("error", "Triton answered without the expected output")
        return out.reshape(-1).astype(np.float64)

    async def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                return bool(await self.client.is_model_ready(self.name, self.version))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception:  # noqa: BLE001
            pass

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.name, "version": self.version}
