"""Plain types and named defaults that several layers share (names, the RunSummary schema,
Timeouts, cache paths): no torch, no grpc, nothing above errors.py."""
