"""Sessions: the channel to per-session helpers, job launching and tracking."""
