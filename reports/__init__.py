"""Reports a trader reads after the day (issue 15): the run ledger (``runs.py``), execution quality
(``execution.py``) and paper vs backtest (``parity.py``), each as text tables, ``--json`` and a
standalone ``--html`` file (``html.py``). They only read ``steadyhand.db`` (sqlite ``mode=ro``), so
running one while the bot trades is safe.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    """``steadyhand report execution|parity``."""
    if args.report_command == "execution":
        from steadyhand.reports.execution import cmd_report_execution

        return cmd_report_execution(args)
    from steadyhand.reports.parity import cmd_report_parity

    return cmd_report_parity(args)


def emit(args: argparse.Namespace, report: dict[str, Any], write_html: Callable[[dict[str, Any], Path], None],
         print_text: Callable[[dict[str, Any]], None], json_view: dict[str, Any] | None = None) -> int:
    """A report's output, the same for every report: ``--html FILE`` first (a file that cannot be
    written: say so, exit 1, print nothing half), then ``--json`` (``json_view``, default the whole
    report) or the text tables."""
    if args.html:
        try:
            write_html(report, Path(args.html))
        except OSError as exc:
            print(f"steadyhand: cannot write {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report if json_view is None else json_view))
    else:
        print_text(report)
        if args.html:
            print(f"written: {args.html}")
    return 0
