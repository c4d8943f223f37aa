#!/usr/bin/env bash
# Starts a Spark standalone master or worker in the foreground, chosen by SPARK_ROLE (master | worker).
# Any other arguments are run as a command instead (e.g. `docker run ... atelier-spark spark-submit --version`).
set -euo pipefail

if [[ $# -gt 0 ]]; then
  exec "$@"
fi

case "${SPARK_ROLE:-}" in
  master)
    exec spark-class org.apache.spark.deploy.master.Master \
      --host "${SPARK_MASTER_HOST:-$(hostname)}" \
      --port "${SPARK_MASTER_PORT:-7077}" \
      --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}"
    ;;
  worker)
    exec spark-class org.apache.spark.deploy.worker.Worker \
      --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" \
      --cores "${SPARK_WORKER_CORES:-2}" \
      --memory "${SPARK_WORKER_MEMORY:-6g}" \
      --work-dir "${SPARK_WORKER_DIR:-/opt/spark-work}" \
      "${SPARK_MASTER_URL:-spark://spark-master:7077}"
    ;;
  *)
    echo "spark-entrypoint: set SPARK_ROLE to 'master' or 'worker' (got '${SPARK_ROLE:-}')" >&2
    exit 64
    ;;
esac
