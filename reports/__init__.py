"""Reports a trader reads after the day (issue 15): the run ledger (``runs.py``), execution quality
(``execution.py``) and paper vs backtest (``parity.py``), each as text tables, ``--json`` and a
standalone ``--html`` file (``html.py``). They only read ``steadyhand.db`` (sqlite ``mode=ro``), so
running one while the bot trades is safe.
"""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    """``steadyhand report execution|parity``."""
    if args.report_command == "execution":
        from steadyhand.reports.execution import cmd_report_execution

        return cmd_report_execution(args)
    from steadyhand.reports.parity import cmd_report_parity

    return cmd_report_parity(args)
