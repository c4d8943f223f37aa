"""Atelier's online serving package: the prediction API (``atelier serve``), its own image (docker/serving).

Modules: :mod:`serving.app` (routes, auth, limits, errors, OpenAPI), :mod:`serving.service` (the request path:
features, inference, fallback, uncertainty, log), :mod:`serving.schemas` (spec-derived request validators,
documented responses), :mod:`serving.features` (entity keys, freshness policies, request features),
:mod:`serving.inference` (Triton over tritonclient's asyncio HTTP client, call coalescing),
:mod:`serving.resilience` (circuit breaker, clock), :mod:`serving.metrics` (Prometheus), :mod:`serving.predlog` (the prediction log),
:mod:`serving.server` (uvicorn), :mod:`serving.demo` (the demo's requests). It never imports Airflow; the
Triton model it calls is written by :mod:`pipelines.deploy`.
"""
