"""Order replacement through Alpaca: the local exchange's PATCH /v2/orders/{id} speaks Alpaca's
shape over the wire (a new order, the old ``replaced`` with ``replaced_by`` / ``replaces``, 422
when it filled first), and the adapter's ``replace`` maps it onto Broker.replace, retries included.
Waits are deadline polls, never sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests
from alpaca_exchange import KEY, SECRET, alpaca_settings, inject, module_exchange, wait_for
from steadyhand.brokers.alpaca.broker import AlpacaBroker
from steadyhand.brokers.base import NotCancelable, OrderNotFound, OrderRejected
from steadyhand.domain import OrderSpec, OrderStatus, OrderType, Side
from steadyhand.sim.server import ServerThread

FAR = Decimal("1.00")  # a buy limit this far below the market never fills
HEADERS = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    yield from module_exchange(tmp_path_factory, "alpaca-replace")


@pytest.fixture
def broker(exchange: ServerThread) -> Iterator[AlpacaBroker]:
    b = AlpacaBroker(alpaca_settings(exchange), api_key=KEY, secret_key=SECRET, retry_wait_s=0.05,
                     reconnect_min_s=0.2)
    yield b
    b.close()


def resting(cid: str, qty: int = 5) -> OrderSpec:
    return OrderSpec(cid, "MSFT", Side.BUY, qty, type=OrderType.LIMIT, limit_price=FAR)


def rest(exchange: ServerThread, method: str, path: str, body: dict[str, object] | None = None) -> requests.Response:
    return requests.request(method, exchange.server.urls["trading_url"] + path, json=body, headers=HEADERS,
                            timeout=5)


def test_patch_speaks_alpacas_shape_over_the_wire(broker: AlpacaBroker, exchange: ServerThread) -> None:
    old = broker.submit(resting("w-1"))
    reply = rest(exchange, "PATCH", f"/v2/orders/{old.broker_order_id}",
                 {"qty": "4", "limit_price": "1.50", "client_order_id": "w-1-amended"})
    assert reply.status_code == 200, reply.text
    new = reply.json()
    assert (new["client_order_id"], new["replaces"], new["qty"], new["limit_price"], new["status"]) == (
        "w-1-amended", old.broker_order_id, "4", "1.5", "new")
    assert new["id"] != old.broker_order_id
    was = rest(exchange, "GET", f"/v2/orders/{old.broker_order_id}").json()
    assert (was["status"], was["replaced_by"], was["replaced_at"] is not None) == ("replaced", new["id"], True)
    # the old order is not open any more: 422, as Alpaca answers an order that filled or ended first
    again = rest(exchange, "PATCH", f"/v2/orders/{old.broker_order_id}", {"qty": "3"})
    assert again.status_code == 422 and "not open" in again.json()["message"]
    assert rest(exchange, "PATCH", "/v2/orders/00000000-0000-4000-8000-000000000000", {"qty": "3"}).status_code == 404
    assert rest(exchange, "PATCH", f"/v2/orders/{new['id']}", {}).status_code == 422  # nothing changed
    assert rest(exchange, "PATCH", f"/v2/orders/{new['id']}", {"limit_price": "1.005"}).status_code == 422
    broker.cancel(new["id"])


def test_adapter_replace_then_fill_under_the_new_id(broker: AlpacaBroker, exchange: ServerThread) -> None:
    cursor = broker.poll(None).cursor
    old = broker.submit(resting("w-2", qty=5))
    new = broker.replace(old.broker_order_id, qty=6, limit_price=Decimal("10000.00"))  # marketable now
    assert (new.client_order_id, new.replaces, new.qty) == ("w-2~r1", old.broker_order_id, 6)
    seen: dict[str, OrderStatus] = {}
    fills = []

    def settled() -> bool:
        nonlocal cursor
        updates = broker.poll(cursor)
        cursor = updates.cursor
        seen.update({o.client_order_id: o.status for o in updates.orders})
        fills.extend(updates.fills)
        return seen.get("w-2") is OrderStatus.REPLACED and seen.get("w-2~r1") is OrderStatus.FILLED

    wait_for(settled, what="the old order replaced and the new one filled")
    assert sum(f.qty for f in fills if f.client_order_id == "w-2~r1") == 6
    assert not [f for f in fills if f.client_order_id == "w-2"]
    gone = broker.get_by_client_id("w-2")
    assert gone is not None and (gone.status, gone.replaced_by) == (OrderStatus.REPLACED, new.broker_order_id)
    with pytest.raises(NotCancelable):  # it filled first
        broker.replace(new.broker_order_id, qty=9)
    with pytest.raises(OrderNotFound):
        broker.replace("00000000-0000-4000-8000-000000000000", qty=1)


def test_adapter_replace_refusals_and_a_lost_reply(broker: AlpacaBroker, exchange: ServerThread) -> None:
    old = broker.submit(resting("w-3"))
    with pytest.raises(OrderRejected):
        broker.replace(old.broker_order_id, limit_price=Decimal("1.005"))  # sub-penny
    assert broker.get_by_client_id("w-3").status is OrderStatus.SUBMITTED  # goes on unchanged
    # the PATCH is processed but its reply is a 503: the retry meets its own replacement, not a second one
    inject(exchange, method="PATCH", path="/v2/orders/", status=503, count=1, after=True)
    new = broker.replace(old.broker_order_id, qty=7)
    assert (new.client_order_id, new.replaces, new.qty) == ("w-3~r1", old.broker_order_id, 7)
    assert [o.client_order_id for o in broker.open_orders() if o.client_order_id.startswith("w-3")] == ["w-3~r1"]
    broker.cancel(new.broker_order_id)
