"""loraplane: LoRA fine-tuning and multi-adapter serving over gRPC.

This package is the shared core both services import: settings, object storage, the adapter
artifact contract, drift statistics, errors, the client and the CLI. It never imports a
service, torch or vLLM at module level, so clients and servicers start fast.
"""

__version__ = "0.1.0"
