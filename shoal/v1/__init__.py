"""Generated gRPC code for shoal.v1 (from proto/; regenerate with scripts/gen_proto.py)."""
