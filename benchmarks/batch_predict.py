"""Batch prediction benchmark: all 336,776 flights of 2013 on local[2], in one run.

    ATELIER_PROFILE=test .venv/bin/python benchmarks/batch_predict.py [--alias champion | --model-version N]

1. the whole job in-process (``pipelines.batch.predict.run``: read, point-in-time join, score, write, Great
   Expectations, publish) over [2013-01-01, 2014-01-01), its stage timings;
2. the scoring stage alone: the same feature rows cached in Spark, then ``mapInPandas`` scoring (prediction,
   intervals, model columns) into Spark's ``noop`` sink, ``--repeat`` times;
3. bare ``inplace_predict`` on the same feature matrix in this one process (all cores), ``--repeat`` times;
   and bare predict + intervals (what each scoring batch computes).

Needs the profile's lake (flights, offline feature tables) and a registered model. The last line is one JSON
object of figures (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.support


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--model-version")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-job", action="store_true", help="only the scoring stage and the bare rates")
    parser.add_argument("--sample-trees", type=int, default=0,
                        help="score with an unregistered bundle of this many depth-8 trees trained here on June 2013 "
                             "(the size model.yaml asks for) instead of the registered version's")
    args = parser.parse_args()

    from pipelines.batch import predict
    from pipelines.config import load_settings
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake
    from pipelines.models.registry import load_bundle
    from pipelines.spark import get_spark
    from pipelines.usecases import get_usecase

    settings = load_settings()
    usecase = get_usecase("flights_eta", settings.usecases_path)
    lake = Lake.from_settings(settings)
    figures: dict[str, object] = {"load_start": load_average()}
    start, end = datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 1, tzinfo=UTC)
    plan = predict.plan(settings, usecase, start, end, "benchmark-batch",
                        alias=None if args.model_version else args.alias, version=args.model_version)
    bundle = load_bundle(settings, plan.model.name, version=plan.model.version)

    t = time.perf_counter()
    spark = get_spark(settings, "atelier-benchmark-batch-predict")
    figures["spark_session_s"] = round(time.perf_counter() - t, 1)
    if args.sample_trees:
        import tempfile

        from tests.support.bundles import train_bundle

        folder = Path(tempfile.mkdtemp(prefix="atelier-bench-bundle-")) / "bundle"
        bundle = train_bundle(spark, settings, usecase, datetime(2013, 6, 1, tzinfo=UTC),
                              datetime(2013, 7, 1, tzinfo=UTC), folder, trees=args.sample_trees, depth=8)
        bundle.version = f"sample-{args.sample_trees}"
    figures["model_version"] = bundle.version
    figures["model_trees"] = bundle.booster.num_boosted_rounds()
    figures["model_features"] = len(bundle.feature_names)

    # 1. The whole job.
    if not args.skip_job:
        loads = spark.sparkContext.accumulator(0)
        result = predict.run(spark, settings, usecase, plan, loads=loads, bundle=bundle)
        figures["job_rows"] = result.output_rows
        figures["job_days"] = len(result.days)
        figures["job_total_s"] = result.seconds["total"]
        figures["job_stages_s"] = result.seconds
        figures["job_rows_per_s"] = round(result.output_rows / result.seconds["total"])
        figures["bundle_loads"] = loads.value
        print(f"whole job: {result.output_rows:,} rows in {result.seconds['total']:.1f} s {result.seconds}",
              flush=True)

    # 2. The scoring stage alone, on cached feature rows.
    features = load_feature_set(usecase)
    frame = predict.features_frame(spark, lake, features, plan, predict.read_entities(spark, lake, plan)).cache()
    rows = frame.count()
    spark_times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        predict.score(spark, frame, bundle, "benchmark").write.format("noop").mode("overwrite").save()
        spark_times.append(time.perf_counter() - t)
    spark_s = statistics.median(spark_times)
    print(f"spark scoring stage: {rows:,} rows, {spark_times}", flush=True)

    # 3. Bare inplace_predict on the same matrix, one process.
    pdf = frame.select(*bundle.feature_names).toPandas()
    frame.unpersist()
    matrix = bundle.matrix(pdf)
    bundle.booster.set_param({"nthread": os.cpu_count() or 2})
    bare_times, full_times = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        bundle.predict(matrix)
        bare_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        bundle.intervals(bundle.predict(matrix), matrix)
        full_times.append(time.perf_counter() - t)
    bare_s, full_s = statistics.median(bare_times), statistics.median(full_times)
    print(f"bare inplace_predict: {bare_times}; with intervals: {full_times}", flush=True)
    spark.stop()

    figures.update({
        "scoring_rows": rows,
        "spark_scoring_rows_per_s": round(rows / spark_s),
        "bare_inplace_predict_rows_per_s": round(rows / bare_s),
        "bare_predict_and_intervals_rows_per_s": round(rows / full_s),
        "spark_vs_bare": round(bare_s / spark_s, 3),
        "spark_vs_bare_with_intervals": round(full_s / spark_s, 3),
        "load_end": load_average(),
    })
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
