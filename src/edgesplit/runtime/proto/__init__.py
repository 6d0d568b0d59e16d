"""Generated gRPC code; regenerate with `make proto`, do not edit."""
