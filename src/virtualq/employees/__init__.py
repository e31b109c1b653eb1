"""Employees: a tenant's staff, who call and serve tickets."""
