"""The prediction log under faults, on the real file system: a write that fails part-way leaves no partial
line and loses only its own batch, counted; the error shows in ``status()`` (``/readyz``) and the metrics
until a write succeeds again; size and retention caps delete the oldest closed files, counted.

A full disk is made with a real kernel limit, not a mock: the writer runs in a child process whose
``RLIMIT_FSIZE`` caps every file it writes, so ``write`` really stops part-way and then fails with EFBIG,
as it would with ENOSPC on a full disk (a full file system itself cannot be mounted here without root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from pipelines.config import load_settings
from serving.predlog import PredictionLog
from serving.service import PredictionService

pytestmark = pytest.mark.timeout(60)

CHILD = textwrap.dedent("""
    import json, resource, signal, sys, time
    from pathlib import Path
    from serving.predlog import PredictionLog

    folder, limit = Path(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as ENOSPC on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    failed = []
    log = PredictionLog(folder, batch=10, flush_s=0.01, on_failed=failed.append)
    log.start()

    def settle(n):
        deadline = time.monotonic() + 10
        while log.written + log.failed < n and time.monotonic() < deadline:
            time.sleep(0.01)

    n = 0
    for batch in range(12):  # batches of 10 records of ~100 bytes: the 2,000-byte cap falls inside batch 2
        for i in range(10):
            log.append("uc", {"as_of": "2013-06-01T12:00:00Z", "request_id": f"{batch}-{i}", "pad": "x" * 60})
        n += 10
        settle(n)
    during = log.status()
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # disk freed
    for i in range(10):
        log.append("uc", {"as_of": "2013-06-01T12:00:00Z", "request_id": f"after-{i}", "pad": "x" * 60})
    settle(n + 10)
    after = log.status()
    log.close()
    print(json.dumps({"during": during, "after": after, "failed_calls": failed}))
""")


def test_a_write_that_fails_part_way_leaves_only_whole_lines_and_is_surfaced(tmp_path):
    folder = tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), "2000"], capture_output=True, text=True,
                         env=env, timeout=50, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    during, after = report["during"], report["after"]

    assert during["ok"] is False and during["error"] == "EFBIG: File too large"  # the kernel's own error
    assert during["written"] + during["failed"] == during["accepted"] == 120
    assert during["failed"] >= 100 and during["failed"] % 10 == 0  # whole batches, the failing one included
    assert sum(report["failed_calls"]) == after["failed"] == during["failed"]
    assert after["ok"] is True and after["error"] is None  # the next good write clears it
    assert after["written"] == during["written"] + 10

    lines: list[bytes] = []
    for path in folder.rglob("*.jsonl"):
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{path} ends with a partial line"
        lines += data.splitlines(keepends=True)
    ids = [json.loads(line)["request_id"] for line in lines]  # every line is a whole record
    assert len(ids) == len(set(ids)) == after["written"]
    assert {f"after-{i}" for i in range(10)} <= set(ids)
    # What was written under the cap fits in it: the batch that crossed it was truncated away, not kept in part.
    assert sum(len(line) for line, i in zip(lines, ids, strict=True) if not i.startswith("after-")) <= 2000


def _files(folder, n: int, size: int, start_age_s: float) -> list:
    """n closed part files, oldest first, last modified start_age_s, start_age_s - 1, ... seconds ago."""
    paths = []
    day = folder / "uc" / "date=2013-06-01"
    day.mkdir(parents=True)
    for i in range(n):
        path = day / f"part-old-{i}.jsonl"
        path.write_bytes(b"x" * (size - 1) + b"\n")
        t = time.time() - start_age_s + i
        os.utime(path, (t, t))
        paths.append(path)
    return paths


def test_retention_deletes_files_older_than_it_by_file_time(tmp_path):
    evicted = []
    log = PredictionLog(tmp_path, retention_s=3600, on_evicted=lambda reason, size: evicted.append((reason, size)))
    old = _files(tmp_path, 3, 100, start_age_s=7200)
    log.enforce_caps()
    assert not any(p.exists() for p in old) and not (tmp_path / "uc" / "date=2013-06-01").exists()
    assert evicted == [("retention", 100)] * 3 and log.evicted_files == 3 and log.bytes == 0

    recent = _files(tmp_path, 2, 100, start_age_s=60)  # a replay's simulated date, written a minute ago: kept
    log.enforce_caps()
    assert all(p.exists() for p in recent) and log.bytes == 200


def test_the_size_cap_deletes_the_least_recently_written_closed_files_never_open_or_just_written_ones(tmp_path):
    evicted = []
    log = PredictionLog(tmp_path, max_bytes=2**20, flush_s=0.01,
                        on_evicted=lambda reason, size: evicted.append((reason, size))).start()
    try:
        old = _files(tmp_path, 5, 300 * 1024, start_age_s=600)  # 1.5 MiB of closed files
        log.append("uc", {"as_of": "2013-06-01T00:00:00Z", "request_id": "live"})
        deadline = time.monotonic() + 10
        while log.written < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        log.enforce_caps()
        assert [p.exists() for p in old] == [False, False, True, True, True]  # the two oldest went
        assert evicted == [("size", 300 * 1024)] * 2 and log.bytes <= 2**20
        theirs = tmp_path / "uc" / "date=2013-06-02" / "part-120000-99999-1.jsonl"  # another API process's
        theirs.parent.mkdir()
        theirs.write_bytes(b"x" * 1023 + b"\n")
        log.max_bytes = 2**10
        log.enforce_caps()  # every old closed file goes; the open one and the one just written stay
        assert not any(p.exists() for p in old) and theirs.exists()
        [live] = [p for p in tmp_path.rglob("*.jsonl") if p != theirs]
        assert json.loads(live.read_text())["request_id"] == "live"
    finally:
        log.close()


def test_the_api_shows_the_log_in_readyz_and_its_metrics(tmp_path):
    environ = {**os.environ, "ATELIER__HOME": str(tmp_path / "home"),
               "ATELIER__ONLINE_STORE__SQLITE_PATH": str(tmp_path / "f.db"),
               "ATELIER__API__PREDICTION_LOG_DIR": str(tmp_path / "log"),
               "ATELIER__API__PREDICTION_LOG_MAX_BYTES": str(2**30),
               "ATELIER__API__PREDICTION_LOG_RETENTION_DAYS": "7"}
    svc = PredictionService(load_settings("test", environ=environ))
    assert svc.log.max_bytes == 2**30 and svc.log.retention_s == 7 * 86_400
    _, details = svc.readiness()
    assert details["prediction_log"]["ok"] is True

    # What the writer records on ENOSPC; /readyz is open, so it shows the kind of error, never the path.
    svc.log._failed(5, OSError(28, "No space left on device", "/srv/atelier/predictions/uc/part-1.jsonl"))
    _, details = svc.readiness()
    assert details["prediction_log"]["ok"] is False
    assert details["prediction_log"]["error"] == "ENOSPC: No space left on device"
    text = _scrape(svc)
    assert "atelier_prediction_log_ok 0.0" in text and "atelier_prediction_log_failed_total 5.0" in text


def _scrape(svc) -> str:
    from prometheus_client import generate_latest

    return generate_latest(svc.metrics.registry).decode()
