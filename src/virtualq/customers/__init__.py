"""Customers: the people tickets belong to, shared by the tenants of one account."""
