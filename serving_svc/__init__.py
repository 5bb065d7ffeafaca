"""The serving service: one base model, many LoRA adapters loaded on demand, behind one gRPC endpoint."""
