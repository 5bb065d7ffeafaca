"""Benchmark: the latency cost of live drift monitoring (python -m bench.drift)."""
