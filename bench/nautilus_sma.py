"""NautilusTrader's BacktestEngine with the same SMA(5/20) crossover as steadyhand, on a replay CSV.

Runs in NautilusTrader's own virtualenv (it pins pandas < 3; steadyhand needs pandas 3), so it
imports nothing from steadyhand. Prints one JSON line: engine, bars, seconds (engine.run() only,
data already loaded), bars_per_s, orders, fills.

    /tmp/venv-nautilus/bin/python bench/nautilus_sma.py bars.csv
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.indicators import SimpleMovingAverage
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import AccountType, OmsType, OrderSide
from nautilus_trader.model.identifiers import InstrumentId, Symbol, TraderId, Venue
from nautilus_trader.model.instruments import Equity
from nautilus_trader.model.objects import Money, Price, Quantity
from nautilus_trader.persistence.wranglers import BarDataWrangler
from nautilus_trader.trading.strategy import Strategy

VENUE = "XNAS"
EPS = 1e-12


class SmaCrossConfig(StrategyConfig, frozen=True):
    bar_types: list[str]
    fast: int = 5
    slow: int = 20
    qty: int = 10


class SmaCross(Strategy):
    """Long-only SMA crossover over every instrument: +qty on a golden cross, flat on a death cross."""

    def __init__(self, config: SmaCrossConfig) -> None:
        super().__init__(config)
        self.smas: dict[InstrumentId, list] = {}
        self.orders_sent = 0
        self.fills = 0

    def on_start(self) -> None:
        for text in self.config.bar_types:
            bar_type = BarType.from_str(text)
            self.smas[bar_type.instrument_id] = [SimpleMovingAverage(self.config.fast),
                                                  SimpleMovingAverage(self.config.slow), None]
            self.subscribe_bars(bar_type)

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        fast, slow, prev = self.smas[iid]
        fast.handle_bar(bar)
        slow.handle_bar(bar)
        if not slow.initialized:
            return
        diff = fast.value - slow.value
        if abs(diff) <= EPS * abs(slow.value):
            diff = 0.0
        self.smas[iid][2] = diff
        if prev is None:
            return
        position = self.portfolio.net_position(iid)
        if diff > 0 and prev <= 0 and position < self.config.qty:
            self._order(iid, OrderSide.BUY, self.config.qty - int(position))
        elif diff < 0 and prev >= 0 and position > 0:
            self._order(iid, OrderSide.SELL, int(position))

    def _order(self, iid: InstrumentId, side: OrderSide, qty: int) -> None:
        order = self.order_factory.market(instrument_id=iid, order_side=side, quantity=Quantity.from_int(qty))
        self.submit_order(order)
        self.orders_sent += 1

    def on_order_filled(self, event: object) -> None:
        self.fills += 1


def main(csv_path: str) -> None:
    frame = pd.read_csv(csv_path, parse_dates=["ts"])
    engine = BacktestEngine(config=BacktestEngineConfig(trader_id=TraderId("BENCH-001"),
                                                        logging=LoggingConfig(log_level="ERROR")))
    engine.add_venue(venue=Venue(VENUE), oms_type=OmsType.NETTING, account_type=AccountType.CASH,
                     base_currency=USD, starting_balances=[Money(1_000_000_000, USD)])
    bar_types = []
    for symbol, df in frame.groupby("symbol", sort=False):
        instrument = Equity(instrument_id=InstrumentId(Symbol(symbol), Venue(VENUE)), raw_symbol=Symbol(symbol),
                            currency=USD, price_precision=4, price_increment=Price.from_str("0.0001"),
                            lot_size=Quantity.from_int(1), ts_event=0, ts_init=0)
        engine.add_instrument(instrument)
        bar_type = BarType.from_str(f"{symbol}.{VENUE}-1-MINUTE-LAST-EXTERNAL")
        bars = BarDataWrangler(bar_type, instrument).process(
            df.set_index("ts")[["open", "high", "low", "close", "volume"]])
        engine.add_data(bars)
        bar_types.append(str(bar_type))
    strategy = SmaCross(SmaCrossConfig(bar_types=bar_types))
    engine.add_strategy(strategy)
    started = time.perf_counter()
    engine.run()
    elapsed = time.perf_counter() - started
    bars = len(frame)
    print(json.dumps({"engine": "nautilus", "bars": bars, "seconds": elapsed, "bars_per_s": bars / elapsed,
                      "orders": strategy.orders_sent, "fills": strategy.fills,
                      "version": __import__("nautilus_trader").__version__}))
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1])
