#!/usr/bin/env bash
# Runs once, on the first start of an empty data volume (the postgres image runs every script in
# /docker-entrypoint-initdb.d). Creates one role + one database each for Airflow's metadata and MLflow's
# tracking/registry store. Passwords come from the container environment (docker/.env), never from this file;
# psql's :'var' interpolation quotes them as SQL literals.
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set (docker/.env)}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set (docker/.env)}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname postgres \
  -v airflow_password="${AIRFLOW_DB_PASSWORD}" \
  -v mlflow_password="${MLFLOW_DB_PASSWORD}" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
-- Neither application needs the other's database, nor the default "public" schema rights on postgres.
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
SQL
