"""Market data before it reaches the strategy: bar validation (the feed's gate)."""
