"""Plain types and named defaults that several layers share: no torch, no grpc, no pydantic."""
