"""The TWS socket protocol's messages, both ways, for the TWS face of the local exchange.

The text protocol of server versions up to 178 (ib_async 2.1 speaks exactly that range; 201+ is
protobuf framing): every message is a 4-byte big-endian length and NUL-terminated fields. The
field orders here follow the decoder of the reference client (ib_async ``decoder.py``) line by
line, including what changes between 176 and 178: ``faProfile`` in open / completed orders (gone
from 177) and ``pendingPriceRevision`` in executions (from 178). Only plain US stocks on SMART are
described; everything a stock order does not use is sent empty ("unset"), as TWS does.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
UNSET_DOUBLE = "1.7976931348623157E308"  # what TWS writes for "no value" in a double field
MIN_VERSION, MAX_VERSION = 157, 178

# Incoming message ids (client -> TWS) this face answers.
REQ_MKT_DATA, CANCEL_MKT_DATA, PLACE_ORDER, CANCEL_ORDER, REQ_OPEN_ORDERS = 1, 2, 3, 4, 5
REQ_ACCOUNT_UPDATES, REQ_EXECUTIONS, REQ_IDS, REQ_CONTRACT_DETAILS = 6, 7, 8, 9
REQ_AUTO_OPEN_ORDERS, REQ_ALL_OPEN_ORDERS, REQ_MANAGED_ACCTS = 15, 16, 17
REQ_HISTORICAL_DATA, CANCEL_HISTORICAL_DATA, REQ_CURRENT_TIME = 20, 25, 49
REQ_REAL_TIME_BARS, CANCEL_REAL_TIME_BARS, REQ_GLOBAL_CANCEL, REQ_MARKET_DATA_TYPE = 50, 51, 58, 59
REQ_POSITIONS, REQ_ACCOUNT_SUMMARY, CANCEL_ACCOUNT_SUMMARY, CANCEL_POSITIONS = 61, 62, 63, 64
START_API, REQ_ACCOUNT_UPDATES_MULTI, CANCEL_ACCOUNT_UPDATES_MULTI, REQ_COMPLETED_ORDERS = 71, 76, 77, 99

# Well-known contract ids (as IB has them); other symbols get a stable made-up one.
CON_IDS = {"AAPL": 265598, "MSFT": 272093, "NVDA": 4815747, "SPY": 756733, "QQQ": 320227571,
           "AMZN": 3691937, "TSLA": 76792991, "META": 107113386, "GOOGL": 208813719}
ORDER_TYPES = {"market": "MKT", "limit": "LMT", "stop": "STP", "stop_limit": "STP LMT"}
FROM_ORDER_TYPE = {v: k for k, v in ORDER_TYPES.items()}


def frame(fields: Iterable[object]) -> bytes:
    """One message: the fields NUL-terminated, prefixed with their length."""
    body = "".join(f"{_text(f)}\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return num(value)
    return str(value)


def split_frames(buffer: bytearray) -> list[list[str]]:
    """Take every complete message off the front of ``buffer`` (in place), as field lists."""
    out: list[list[str]] = []
    while len(buffer) >= 4:
        size = struct.unpack(">I", bytes(buffer[:4]))[0]
        if len(buffer) < 4 + size:
            break
        body = bytes(buffer[4:4 + size]).decode(errors="replace")
        del buffer[:4 + size]
        fields = body.split("\0")
        if fields and fields[-1] == "":
            fields.pop()
        out.append(fields)
    return out


def parse_version_range(text: str) -> tuple[int, int]:
    """``v157..178`` (optionally followed by connect options) -> (157, 178)."""
    head = text.split(" ", 1)[0]
    if not head.startswith("v") or ".." not in head:
        raise ValueError(f"not an API version range: {text!r}")
    low, high = head[1:].split("..", 1)
    return int(low), int(high)


def con_id(symbol: str) -> int:
    return CON_IDS.get(symbol) or 10_000_000 + zlib.crc32(symbol.encode()) % 90_000_000


def ib_time(t: datetime) -> str:
    """A timestamp as TWS writes it in executions: ``20240102 10:31:22 America/New_York``."""
    return t.astimezone(NEW_YORK).strftime("%Y%m%d %H:%M:%S") + " America/New_York"


def num(value: float | int | None) -> str:
    """A price or size: empty when unset, no trailing ``.0`` on whole numbers."""
    if value is None:
        return ""
    if float(value) == int(value):
        return str(int(value))
    return repr(round(float(value), 6))


def contract_fields(symbol: str, exchange: str = "SMART") -> list[object]:
    """conId, symbol, secType, lastTradeDate, strike, right, multiplier, exchange, currency,
    localSymbol, tradingClass (no primaryExchange: the order / execution layout)."""
    return [con_id(symbol), symbol, "STK", "", "0", "", "", exchange, "USD", symbol, "NMS"]


@dataclass(frozen=True, slots=True)
class OrderView:
    """One order as TWS shows it to API clients."""

    order_id: int
    client_id: int
    perm_id: int
    order_ref: str
    account: str
    symbol: str
    action: str  # BUY / SELL
    qty: int
    order_type: str  # MKT / LMT / STP / STP LMT
    lmt_price: float | None
    aux_price: float | None
    tif: str  # DAY / GTC
    status: str  # Submitted / Filled / Cancelled / Inactive ...
    filled: int
    avg_fill_price: float
    last_fill_price: float
    completed_time: str = ""
    completed_status: str = ""

    @property
    def remaining(self) -> int:
        return 0 if self.status in ("Cancelled", "Inactive", "ApiCancelled") else self.qty - self.filled


def _order_head(o: OrderView) -> list[object]:
    return [o.action, o.qty, o.order_type, num(o.lmt_price), num(o.aux_price), o.tif, "", o.account, "O", 0,
            o.order_ref]


def open_order(o: OrderView, version: int) -> bytes:
    """OPEN_ORDER (5): ib_async ``Decoder.openOrder`` field for field."""
    f: list[object] = [5, o.order_id, *contract_fields(o.symbol), *_order_head(o), o.client_id, o.perm_id,
                       0, 0, "0", "", "", "", "", ""]  # outsideRth hidden discrAmt goodAfter _ faGroup faMethod faPct
    if version < 177:
        f.append("")  # faProfile
    f += ["", "", "0", "", "", 0, "", "", 0, "", "", "", "", "", 0, 0, 0, 0, 0, 3, 0, 0, "", 0, 0, "", 0, "", ""]
    # continuousUpdate referencePriceType trailStopPrice trailingPercent basisPoints basisPointsType comboDescr
    f += [0, 0, "", "", "", "", ""]
    f += [0, 0, 0]  # combo legs, order combo legs, smart combo routing params
    f += ["", "", ""]  # scaleInitLevelSize scaleSubsLevelSize scalePriceIncrement
    f += [""]  # hedgeType
    f += [0, "", "", 0, 0]  # optOutSmartRouting clearingAccount clearingIntent notHeld dncPresent
    f += [""]  # algoStrategy
    f += [0, 0, o.status, *[""] * 9, "", "", "", "", "", 0, 0]  # solicited whatIf state margins commission ...
    f += [0]  # conditions
    f += ["None", "", "", "", "", "", "", 0, "", "", "", "", 0, 0, "", 0]  # adjusted* softDollarTier cashQty ...
    f += ["", 0, 0]  # duration postToAts autoCancelParent
    f += ["", "", "", "", ""]  # minTradeQty minCompeteSize competeAgainstBestOffset midOffsetAtWhole/Half
    return frame(f)


def completed_order(o: OrderView, version: int) -> bytes:
    """COMPLETED_ORDER (101): ib_async ``Decoder.completedOrder`` field for field (no order id)."""
    f: list[object] = [101, *contract_fields(o.symbol), *_order_head(o), o.perm_id, 0, 0, "0", "", "", "", ""]
    if version < 177:
        f.append("")  # faProfile
    f += ["", "", "0", "", "", 0, "", "", "", "", "", "", "", 0, 0, 0, "", 0, 0, "", 0, "", ""]
    f += [0, 0, "", "", ""]  # continuousUpdate referencePriceType trailStopPrice trailingPercent comboDescr
    f += [0, 0, 0, "", "", "", ""]  # legs x3, scale x3, hedgeType
    f += ["", "", 0, 0, ""]  # clearingAccount clearingIntent notHeld dncPresent algoStrategy
    f += [0, o.status, 0, 0, 0]  # solicited status randomizeSize randomizePrice conditions
    f += ["", "", "", 0, 0, "", o.filled, 0, 0, "", 0, 0, "", o.completed_time, o.completed_status]
    f += ["", "", "", "", ""]
    return frame(f)


def order_status(o: OrderView) -> bytes:
    """ORDER_STATUS (3): no version field at these server versions."""
    return frame([3, o.order_id, o.status, o.filled, o.remaining, num(o.avg_fill_price), o.perm_id, 0,
                  num(o.last_fill_price), o.client_id, "", 0])


@dataclass(frozen=True, slots=True)
class ExecView:
    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    order_ref: str
    account: str
    symbol: str
    side: str  # BOT / SLD
    shares: int
    price: float
    time: datetime
    cum_qty: int
    avg_price: float


def exec_details(e: ExecView, req_id: int, version: int) -> bytes:
    """EXECUTION_DATA (11): ib_async ``Decoder.execDetails``; ``req_id`` -1 for a live fill."""
    f: list[object] = [11, req_id, e.order_id, *contract_fields(e.symbol, "ISLAND"), e.exec_id, ib_time(e.time),
                       e.account, "ISLAND", e.side, e.shares, num(e.price), e.perm_id, e.client_id, 0, e.cum_qty,
                       num(e.avg_price), e.order_ref, "", "", "", 1]
    if version >= 178:
        f.append(0)  # pendingPriceRevision
    return frame(f)


def commission(shares: int, price: float) -> float:
    """IBKR Pro fixed pricing: USD 0.005 a share, at least 1.00, at most 1 % of the trade value."""
    return round(max(1.0, min(0.005 * shares, 0.01 * shares * price)), 2)


def commission_report(exec_id: str, amount: float) -> bytes:
    return frame([59, 1, exec_id, num(amount), "USD", UNSET_DOUBLE, UNSET_DOUBLE, ""])


def error(req_id: int, code: int, message: str, version: int) -> bytes:
    f: list[object] = [4, 2, req_id, code, message]
    if version >= 166:
        f.append("")  # advancedOrderRejectJson
    return frame(f)


def contract_details(req_id: int, symbol: str, version: int) -> bytes:
    """CONTRACT_DATA (10) for a SMART-routed US stock; no version field from 164 on."""
    f: list[object] = [10] + ([8] if version < 164 else []) + [
        req_id, symbol, "STK", "", "0", "", "SMART", "USD", symbol, "NMS", "NMS", con_id(symbol), "0.01", "",
        "ACTIVETIM,ALLOC,DAY,GTC,LMT,MKT,STP,STPLMT", "SMART,ISLAND,NYSE,ARCA", 1, 0, symbol, "NASDAQ", "", "",
        "", "", "US/Eastern", "", "", "", "", 0, "", "", "", "26", "", "COMMON", "0.0001", "0.0001", "100"]
    return frame(f)


def position(account: str, symbol: str, qty: int, avg_cost: float) -> bytes:
    return frame([61, 3, account, *contract_fields(symbol, "")[:7], "", "USD", symbol, "NMS", qty, num(avg_cost)])


def portfolio(account: str, symbol: str, qty: int, mark: float, avg_cost: float) -> bytes:
    """PORTFOLIO_VALUE (7): contract without exchange but with primaryExchange."""
    c = contract_fields(symbol)
    value = round(qty * mark, 2)
    return frame([7, 8, *c[:7], "NASDAQ", "USD", symbol, "NMS", qty, num(mark), num(value), num(avg_cost),
                  num(round(value - qty * avg_cost, 2)), "0", account])


def bar_rows(bars: Sequence[tuple[str, float, float, float, float, int]]) -> list[object]:
    """(date, open, high, low, close, volume) rows as HISTORICAL_DATA fields (wap = close, count 1)."""
    out: list[object] = []
    for date, o, h, lo, c, v in bars:
        out += [date, num(o), num(h), num(lo), num(c), v, num(c), max(1, v // 100)]
    return out
