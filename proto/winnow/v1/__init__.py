"""Generated protobuf and gRPC stubs of Winnow's v1 API and bus records (regenerate: python proto/gen.py)."""
