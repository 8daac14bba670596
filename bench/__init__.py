"""Benchmark drivers and the report generator behind every figure in docs/benchmarks/ (`siteloc bench`).

Outside the library on purpose: `ml/` is what the service runs, `bench/` measures it.
"""
