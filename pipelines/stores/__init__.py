"""Atelier's feature stores. ``pipelines.stores.online``: the online (serving-time, latest-value) store."""
