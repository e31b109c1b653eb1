"""Tenants: one business location or unit, the boundary of all queue data."""
