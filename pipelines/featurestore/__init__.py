"""The feature store: feature views from specs, the offline store and point-in-time training sets, materialization to the online store, skew checks."""
