"""Prometheus metrics of the prediction API (one registry per app, served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "STAGES", "ApiMetrics"]

STAGES = ("feature_lookup", "transform", "inference", "total")
# Sub-millisecond resolution where the budget is (P95 target: a few ms), up to the deadline and beyond.
BUCKETS = (0.0002, 0.0004, 0.0006, 0.0008, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
           0.02, 0.03, 0.05, 0.1, 0.25, 1.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage = Histogram("atelier_api_stage_seconds", "Latency per stage of a prediction request",
                               ["endpoint", "stage"], buckets=BUCKETS, registry=r)
        self.requests = Counter("atelier_api_requests_total", "Answered requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.rows = Counter("atelier_api_predictions_total", "Predictions made (rows), by runtime",
                            ["usecase", "runtime"], registry=r)
        self.fallbacks = Counter("atelier_api_fallbacks_total", "Rows answered by the fallback predictor",
                                 ["usecase", "reason"], registry=r)
        self.freshness = Counter("atelier_api_freshness_actions_total", "Freshness actions per feature view",
                                 ["view", "action"], registry=r)
        self.errors = Counter("atelier_api_errors_total", "Errors by kind", ["kind"], registry=r)
        self.in_flight = Gauge("atelier_api_in_flight", "Requests in progress", registry=r)
        self.log_written = Counter("atelier_prediction_log_written_total", "Records written to the prediction log",
                                   registry=r)
        self.log_dropped = Counter("atelier_prediction_log_dropped_total",
                                   "Records refused because the log queue was full", registry=r)
        self.log_failed = Counter("atelier_prediction_log_failed_total",
                                  "Records lost because writing them failed (disk full, I/O error)", registry=r)
        self.log_evicted = Counter("atelier_prediction_log_evicted_bytes_total",
                                   "Bytes of prediction log files deleted by a cap", ["reason"], registry=r)
        self.log_ok = Gauge("atelier_prediction_log_ok", "1 while the prediction log's last write succeeded",
                            registry=r)
        self.routed = Counter("atelier_api_routed_total", "Predictions (rows) by the version and role that answered",
                              ["usecase", "version", "role"], registry=r)
        self.shadow = Counter("atelier_api_shadow_total", "Shadow copies by outcome (scored, dropped: queue full, "
                              "failed)", ["usecase", "version", "outcome"], registry=r)
        self.routing_version = Gauge("atelier_api_routing_version", "The routing table version in force",
                                     ["usecase"], registry=r)
        self._stage_children = {(e, s): self.stage.labels(e, s) for e in ("predict", "batch") for s in STAGES}

    def observe(self, endpoint: str, lookup: float, transform: float, inference: float, total: float) -> None:
        c = self._stage_children
        c[endpoint, "feature_lookup"].observe(lookup)
        c[endpoint, "transform"].observe(transform)
        c[endpoint, "inference"].observe(inference)
        c[endpoint, "total"].observe(total)

    def render(self) -> bytes:
        return generate_latest(self.registry)
