"""trainer_svc: accepts fine-tuning jobs over gRPC, runs them, publishes adapters."""
