"""The embedded market and exchange (issue 11 layout); the TWS face lives in ``server/tws.py``."""
