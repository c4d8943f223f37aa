"""Model versions made for the deployment tests, registered for real in the test MLflow under their own
registered model (so the rest of the suite's registry is untouched), and a bounded load generator.

A variant is the trained model changed the way real regressions look: a constant bias (a label-unit bug),
a bias in one segment only (learned on the features the API served, so the model itself is wrong there), a
slower runtime (the python backend with 20 ms added per call), another feature spec.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pipelines.models.bundle import ModelBundle

TEST_MODEL = "flights_eta_deploytest"

SLOW_MODEL_PY_PATCH = ("    def execute(self, requests):\n",
                       "    def execute(self, requests):\n        import time\n        time.sleep(0.020)\n")


def register_variant(settings: Any, base: ModelBundle, kind: str, folder: Path, *, booster: Any = None,
                     spec_hash: str | None = None) -> str:
    """Save ``base`` (or its ``booster`` replacement) as a bundle of ``TEST_MODEL`` and register it (alias
    ``variant_<kind>``, as training registers a version); returns the registry version."""
    from tests.support.bundles import register_bundle

    bundle = ModelBundle(**{**{k: getattr(base, k) for k in (
        "usecase", "label", "feature_names", "feature_defaults", "calibration", "feature_ranges", "fallback",
        "feature_spec_hash", "lineage", "offset_feature")}, "model_name": TEST_MODEL})
    if spec_hash is not None:
        bundle.feature_spec_hash = spec_hash
    bundle.save(folder, booster if booster is not None else base.booster)
    return register_bundle(settings, bundle, TEST_MODEL, alias=f"variant_{kind}").version


class Load(threading.Thread):
    """Bounded paced load: ``workers`` sequential clients round-robin over the API replicas and the request
    rows, each request with its own id, together about ``rate`` requests a second (``None``: closed loop, as
    fast as the answers come); every status and answer kept.

    Paced by default: a product service sends its traffic at its own rate, and a canary is judged on that. A
    closed loop on this 2-core machine saturates it (load generator, two replicas and Triton share the cores),
    so latency becomes queueing and ~1% of the Triton calls run out of their 25 ms budget on both arms; the
    judge then rightly needs many more answers to say those rates are within 1 point of each other.
    The closed loop's capacity here is 200-350 requests a second; the default is well under it."""

    def __init__(self, urls: list[str], headers: dict[str, str], rows: list[dict], workers: int = 3,
                 rate: float | None = 120.0) -> None:
        super().__init__(daemon=True)
        self.urls, self.headers, self.rows, self.workers = urls, headers, rows, workers
        self.interval = workers / rate if rate else 0.0  # seconds between one worker's requests
        self.statuses: Counter = Counter()
        self.answers: list[dict] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._seq = 0

    def _worker(self, w: int) -> None:
        clients = [httpx.Client(base_url=u, headers=self.headers, timeout=10) for u in self.urls]
        try:
            i = w
            due = time.monotonic()
            while not self.stop_event.is_set():
                if self.interval:
                    due = max(due + self.interval, time.monotonic() - 1.0)  # behind by > 1 s: no burst
                    pause = due - time.monotonic()
                    if pause > 0 and self.stop_event.wait(pause):
                        break
                with self._lock:
                    self._seq += 1
                    seq = self._seq
                row = self.rows[seq % len(self.rows)]
                client = clients[seq % len(clients)]
                try:
                    r = client.post("/v1/predict", json=row, headers={"X-Request-Id": f"load-{w}-{seq}"})
                    with self._lock:
                        self.statuses[r.status_code] += 1
                        if r.status_code == 200:
                            self.answers.append(r.json())
                        else:
                            self.errors.append(r.text[:300])
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.statuses["transport"] += 1
                        self.errors.append(repr(exc))
                i += 1
        finally:
            for c in clients:
                c.close()

    def run(self) -> None:
        threads = [threading.Thread(target=self._worker, args=(w,), daemon=True) for w in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(60)

    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)


def flip_byte(src: Path, dst: Path, member: str) -> None:
    """A copy of the artifact ZIP with one byte changed inside ``member``'s data (CRC and checksum break)."""
    import zipfile

    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo(member)
    header = info.header_offset
    name_len = int.from_bytes(data[header + 26:header + 28], "little")
    extra_len = int.from_bytes(data[header + 28:header + 30], "little")
    start = header + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    dst.write_bytes(bytes(data))


def served_matrix(log_dir: Path, feature_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """The feature rows the API served (from its prediction log) and each row's origin."""
    rows, origins = [], []
    for path in sorted(log_dir.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            used = record["features_used"]
            rows.append([np.nan if used.get(f) is None else float(used[f]) for f in feature_names])
            origins.append(record["request"]["origin"])
    return np.asarray(rows, dtype=np.float32), origins


def wait_until(predicate: Any, timeout_s: float, what: str, every_s: float = 0.02) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s")
