"""Spawners start, poll and stop sessions on a resource (JupyterHub's contract, adapted)."""
