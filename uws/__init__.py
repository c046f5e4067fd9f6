"""UWS, the User Workspaces Server."""

__version__ = "0.1.0"
