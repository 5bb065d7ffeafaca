"""Generated protobuf and gRPC code for loraplane.v1 (scripts/gen_protos.py)."""
