"""KServe v2 over gRPC, served by Ray Serve's gRPC proxy."""
