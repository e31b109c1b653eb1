"""API keys, roles and scopes, and the tenant context of a request."""
