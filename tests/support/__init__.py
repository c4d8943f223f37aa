"""Helpers shared by tests and benchmarks (never imported by the product packages).

Importable as ``tests.support`` from the repository root: pytest puts it on ``sys.path`` (``pythonpath`` in
setup.cfg), the benchmarks insert it themselves.
"""
