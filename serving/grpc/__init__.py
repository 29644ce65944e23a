"""KServe v2 over gRPC: Ray Serve's gRPC proxy in the app, or a grpc.aio server in one process."""
