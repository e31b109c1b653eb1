"""Webhook subscriptions and their delivery (PRODUCT §5)."""
