"""Pre-trade risk: the checks and the book they read (driven by ``actors/risk.py``)."""
