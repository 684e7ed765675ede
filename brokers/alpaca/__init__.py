"""Alpaca: the broker adapter on alpaca-py, the wire format both ways, and the market-data feed."""
