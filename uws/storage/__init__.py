"""Workspace storage: where workspace directories live and how files get into them safely."""
