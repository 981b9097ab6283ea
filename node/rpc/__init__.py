"""The peer wire: gRPC (grpc.aio) over mutual TLS, thin adapters over the rooms."""
