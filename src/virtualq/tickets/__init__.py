"""Tickets: one customer's place in a queue, its state machine, history and items."""
