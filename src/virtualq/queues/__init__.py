"""Queues: the virtual lines tickets wait in."""
