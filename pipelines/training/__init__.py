"""Training: the model spec, point-in-time training sets validated by Great Expectations, XGBoost (single node or
on Spark), holdout evaluation against baselines, conformal calibration, the report, MLflow registration."""
