"""``steadyhand backtest``: the configured strategy's trades on a replay file (and its look-ahead check).

Everything that can stop the run -- the strategy (``strategies/loader.py``) and the bar file
(``data/bar_files.py``) -- is checked first: one clear message, exit 2. ``--json`` keys are a
promise: ``trades, bars, rejected_bars, realized_pnl, final_positions`` as before, plus
``strategy``, ``refused`` and, with ``--check-lookahead``, ``lookahead``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from steadyhand.config import Settings

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    import pandas as pd
    from steadyhand.backtest.engine import run_backtest
    from steadyhand.data.bar_checks import BarValidator
    from steadyhand.data.bar_files import read_bar_file_text
    from steadyhand.sim.replay import ReplayMarket
    from steadyhand.strategies.loader import load_strategy

    strategy = load_strategy(settings.strategy)  # StrategyError (a ConfigError): exit 2
    read_bar_file_text(args.replay)  # BarFileError: exit 2
    try:
        replay = ReplayMarket(args.replay)
    except ValueError as exc:  # e.g. no readable bars at all
        print(f"backtest: {exc}", file=sys.stderr)
        return EXIT_FAIL
    good, rejected = BarValidator().validate(replay.rows())
    frame = pd.DataFrame([{"ts": b.ts, "symbol": b.symbol, "open": b.open, "high": b.high, "low": b.low,
                           "close": b.close, "volume": b.volume} for b in good])
    if frame.empty:
        print("backtest: no valid bars in the replay file", file=sys.stderr)
        return EXIT_FAIL
    result = run_backtest(frame, strategy, start_cash=settings.sim.start_cash)
    trades = [{"ts": t.ts.isoformat(), "symbol": t.symbol, "side": str(t.side), "qty": t.qty,
               "price": t.price, "intent_id": t.intent_id} for t in result.trades]
    report: dict[str, Any] = {"trades": trades, "bars": result.bars, "rejected_bars": len(rejected),
                              "realized_pnl": result.realized_pnl, "final_positions": result.final_positions,
                              "strategy": result.strategy,
                              "refused": [{"symbol": s, "ts": ts, "reason": r} for s, ts, r in result.refused]}
    code = EXIT_OK
    if args.check_lookahead:
        from steadyhand.backtest.lookahead import check_lookahead

        found = check_lookahead(frame, strategy, cutoffs=args.lookahead_cutoffs)
        report["lookahead"] = {"cutoffs": found.cutoffs, "rows_checked": found.rows_checked,
                               "changed": list(found.changed)}
        code = EXIT_FAIL if found.changed else EXIT_OK
    if args.json:
        print(json.dumps(report))
    else:
        _print(report, result.bars, len(rejected))
    return code


def _print(report: dict[str, Any], bars: int, rejected: int) -> None:
    for t in report["trades"]:
        print(f"{t['ts']} {t['side']:<4} {t['qty']:>5} {t['symbol']:<6} @ {t['price']:.2f}  {t['intent_id']}")
    for r in report["refused"]:
        print(f"refused: {r['ts']} {r['symbol']}: {r['reason']}")
    print(f"{len(report['trades'])} trades over {bars} bars ({rejected} bad bars rejected); "
          f"realized P&L {report['realized_pnl']:.2f}; positions {report['final_positions']}")
    look = report.get("lookahead")
    if look is None:
        return
    for row in look["changed"]:
        print(f"look-ahead: {row['ts']} {row['symbol']} {row['column']} is {row['with_future']} with later bars, "
              f"{row['without_future']} without (history cut at {row['cut_at']})")
    verdict = f"{len(look['changed'])} row(s) change" if look["changed"] else "no row changes"
    print(f"look-ahead check: {look['rows_checked']} rows at {look['cutoffs']} cuts: {verdict} "
          "when later bars are added")
