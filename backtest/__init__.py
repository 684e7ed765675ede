"""Backtests: a strategy over a replay file, without actors (``steadyhand backtest``)."""
