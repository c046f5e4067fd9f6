"""Tornado handlers: REST, websockets and the passthrough proxy."""
