"""Training benchmark: our worker against a plain transformers + peft script (python -m bench.training)."""
