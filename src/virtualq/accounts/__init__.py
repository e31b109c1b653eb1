"""Accounts: the billing entity that owns tenants and customers."""
