"""DAG parse-time benchmark: how long the DAG processor takes to import each Atelier DAG file.

Each file is imported ``--runs`` times (default 5), each time in a fresh interpreter that already has
``airflow.sdk`` loaded (as the DAG processor has), through the probe the DAG-integrity test uses
(``tests/support/dag_parse.py``). The floor, measured the same way in the same run, is a minimal DAG file
(one ``@task``, no Atelier imports), so ``ratio`` is what Atelier's own imports (use-case specs, plugins,
Assets) add on top of Airflow itself. Figures are medians; the load average is reported before and after.

Usage: ``ATELIER_PROFILE=test .venv/bin/python benchmarks/dag_parse.py [--runs 5]``.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.config import load_settings  # noqa: E402
from pipelines.services.airflow import airflow_env  # noqa: E402
from tests.support.dag_parse import parse_dag_file  # noqa: E402

FLOOR_DAG = '''
from datetime import datetime
from airflow.sdk import DAG, task

with DAG(dag_id="floor", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    @task
    def noop():
        return None
    noop()
'''


def median_parse(path: Path, env: dict[str, str], runs: int) -> dict:
    samples = [parse_dag_file(path, env) for _ in range(runs)]
    return {"median_s": round(statistics.median(s["seconds"] for s in samples), 4),
            "min_s": round(min(s["seconds"] for s in samples), 4),
            "modules": samples[0]["modules"], "heavy": samples[0]["heavy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, **airflow_env(load_settings())}
    figures: dict = {"load_before": [round(x, 2) for x in os.getloadavg()], "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        floor_file = Path(tmp) / "floor.py"
        floor_file.write_text(FLOOR_DAG)
        floor = median_parse(floor_file, env, args.runs)
    figures["floor"] = floor
    dags = {}
    for path in sorted((REPO / "dags").glob("*.py")):
        if path.name.startswith("_"):
            continue
        result = median_parse(path, env, args.runs)
        result["ratio"] = round(result["median_s"] / floor["median_s"], 1) if floor["median_s"] else None
        dags[path.stem] = result
        print(f"{path.stem:22s} median {result['median_s'] * 1000:7.1f} ms  x{result['ratio']} of the floor  "
              f"({result['modules']} modules)", flush=True)
    figures["dags"] = dags
    figures["slowest_ratio"] = max(d["ratio"] for d in dags.values())
    figures["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"floor (a one-task DAG) median {floor['median_s'] * 1000:.1f} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
