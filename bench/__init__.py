"""Benchmarks of loraplane against the systems it could be replaced by, run on this machine."""
