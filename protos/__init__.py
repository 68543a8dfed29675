"""Generated protobuf / gRPC modules for the broker <-> runner contract (``rlm_sandbox.proto``)."""
