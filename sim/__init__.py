"""The embedded market and exchange: market models, the clock, the simulated exchange."""
