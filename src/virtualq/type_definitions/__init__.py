"""Type definitions: tenant-defined ticket and item types (JSON Schema for custom data + a state machine)."""
