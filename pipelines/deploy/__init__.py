"""Deployment: model artifacts, the Triton model repository and model control, the routing table every API
replica follows, and rollouts (direct, canary, shadow, A/B) with their analysis and decision ledger.

Modules: :mod:`~pipelines.deploy.repository` (writing Triton model folders), :mod:`~pipelines.deploy.triton`
(a version's Triton model, loading and checking it), :mod:`~pipelines.deploy.artifact` (the versioned ZIP),
:mod:`~pipelines.deploy.routing` (the routing table), :mod:`~pipelines.deploy.analysis` (the statistics),
:mod:`~pipelines.deploy.rollout` (the rollout itself), :mod:`~pipelines.deploy.spec` (``deployment.yaml``).
Imports are lazy: the API imports the routing table without Spark, MLflow or tritonclient's sync client.
"""
