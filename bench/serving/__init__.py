"""Serving benchmark: our gRPC server against raw vLLM and plain peft, all measured in one run.

Every system answers the same requests (same prompts, same adapter per request, greedy, exactly
`max_tokens` new tokens each), one system at a time, each in a subprocess of its own, so the
numbers compare like with like on the machine at hand. `python -m bench.serving --help`.
"""
