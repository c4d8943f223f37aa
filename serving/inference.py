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

    def __init__(self, url: str, name: str, version: str, n_features: int, *, conn_limit: int = 32,
                 max_concurrent: int = 2, max_rows: int = 1024) -> None:
        import tritonclient.http.aio as aio

        self._aio = aio
        self.url, self.name, self.version, self.n_features = url, name, str(version), n_features
        # The session's total timeout is a backstop; each call has its own (shorter) budget.
        self.client = aio.InferenceServerClient(url, conn_limit=conn_limit, conn_timeout=10.0)
        self._output = [aio.InferRequestedOutput(OUTPUT, binary_data=True)]
        self.max_concurrent, self.max_rows = max_concurrent, max_rows
        self._in_flight = 0
        self._pending: list[tuple[np.ndarray, asyncio.Future, float]] = []
        self.calls = self.coalesced_rows = 0

    async def predict(self, matrix: np.ndarray, timeout_s: float) -> np.ndarray:
        """Point predictions for a float32 [rows, n_features] matrix; TritonUnavailable on any failure.

        At most ``max_concurrent`` calls are in flight; requests arriving meanwhile are coalesced into the next
        call (one HTTP round trip and one ``inplace_predict`` for all of them). An idle model is called at once:
        coalescing only happens under load, where it trades nothing for throughput.
        """
        if self._in_flight < self.max_concurrent and not self._pending:
            self._in_flight += 1
            try:
                return await self._call(matrix, timeout_s)
            finally:
                self._in_flight -= 1
                self._drain()
        future = asyncio.get_running_loop().create_future()
        self._pending.append((matrix, future, timeout_s))
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise TritonUnavailable("timeout", f"Triton did not answer within {timeout_s * 1e3:.0f} ms "
                                               "(queued behind other calls)") from None

    def _drain(self) -> None:
        if not self._pending or self._in_flight >= self.max_concurrent:
            return
        batch, rows = [], 0
        while self._pending and rows < self.max_rows:
            item = self._pending.pop(0)
            if not item[1].done():  # its caller may have timed out already
                batch.append(item)
                rows += item[0].shape[0]
        if batch:
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._run_batch(batch))

    async def _run_batch(self, batch: list[tuple[np.ndarray, asyncio.Future, float]]) -> None:
        try:
            matrix = batch[0][0] if len(batch) == 1 else np.concatenate([m for m, _, _ in batch])
            self.coalesced_rows += matrix.shape[0] if len(batch) > 1 else 0
            out = await self._call(matrix, max(t for _, _, t in batch))
            start = 0
            for m, future, _ in batch:
                if not future.done():
                    future.set_result(out[start:start + m.shape[0]])
                start += m.shape[0]
        except TritonUnavailable as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(TritonUnavailable(exc.kind, str(exc)))
        finally:
            self._in_flight -= 1
            self._drain()

    async def _call(self, matrix: np.ndarray, timeout_s: float) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        self.calls += 1

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

    async def warm(self, rounds: int = 3) -> None:
        """Open the connections concurrent calls will use (``max_concurrent`` calls at once, a few times), so no
        request pays a connection set-up; failures are ignored (readiness reports them)."""
        row = np.zeros((1, self.n_features), dtype=np.float32)
        for _ in range(rounds):
            await asyncio.gather(*(self._call(row, 5.0) for _ in range(self.max_concurrent)),
                                 return_exceptions=True)

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
