"""The training worker: one job, one process, `python -m trainer_svc.worker INPUT.json`.

It reads a WorkerInput, then loads the model, tokenizes, trains, evaluates and publishes,
reporting every step as JSON lines (trainer_svc.progress) on stdout. Torch and transformers are
imported here only, never by the service that starts it.
"""
