"""Liveness, readiness and metrics endpoints for operators."""
