"""How tests/data/sma_parity*.{csv,json} were made, kept so the numbers can be traced.

Run on main@66e7774 (the vectorized SMA backtest before the plug-in API): ``python tests/data/make_sma_parity.py``.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from steadyhand.backtest.engine import backtest
from steadyhand.config import StrategySettings
from steadyhand.domain import market_hours
from steadyhand.sim.market import SyntheticMarket

symbols = ("AAPL", "MSFT", "SPY")
market = SyntheticMarket(seed=13, symbols=symbols)
end = market_hours.next_close(datetime(2026, 11, 18, 15, 0, tzinfo=UTC))
rows = ["ts,symbol,open,high,low,close,volume"]
for minute in market_hours.session_open_minutes(end, 390):
    for s in symbols:
        b = market.bar(s, minute)
        rows.append(f"{b.ts.isoformat()},{s},{b.open},{b.high},{b.low},{b.close},{b.volume}")
p = Path("tests/data/sma_parity.csv")
p.write_text("\n".join(rows) + "\n")
df = pd.read_csv(p)
out = {}
cases = {"default": StrategySettings(), "short_3_12": StrategySettings(fast=3, slow=12, qty=7, allow_short=True)}
for name, st in cases.items():
    r = backtest(df, st)
    out[name] = {"settings": {"fast": st.fast, "slow": st.slow, "qty": st.qty, "allow_short": st.allow_short},
                 "trades": [[t.ts.isoformat(), t.symbol, str(t.side), t.qty, t.price, t.intent_id] for t in r.trades],
                 "signals": [s.intent_id for s in r.signals],
                 "realized_pnl": r.realized_pnl, "final_positions": r.final_positions,
                 "final_cash": r.final_cash, "final_equity": r.final_equity, "bars": r.bars}
    print(name, len(r.trades), r.realized_pnl)
Path("tests/data/sma_parity_expected.json").write_text(json.dumps(out, indent=1) + "\n")
