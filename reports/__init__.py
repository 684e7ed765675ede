"""Reports a trader reads after the day (issue 15): the run ledger (``runs.py``), execution quality
(``execution.py``) and paper vs backtest (``parity.py``), each as text tables, ``--json`` and a
standalone ``--html`` file (``html.py``). They only read ``steadyhand.db`` (sqlite ``mode=ro``), so
running one while the bot trades is safe.
"""
