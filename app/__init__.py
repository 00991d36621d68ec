"""Lethe's HTTP and persistence layer (the deletion-request service)."""
