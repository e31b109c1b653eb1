"""The event log: an outbox written in the same transaction as each change (PRODUCT §5)."""
