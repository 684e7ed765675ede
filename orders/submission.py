"""One order's submission with retries (DESIGN §5 step 4): never a resubmission the broker may have.

A transient error or an unknown outcome is retried (tenacity, short waits: the OMS blocks meanwhile),
but every retry first looks the client order id up, and a failed lookup raises instead of being
taken for "not there". A duplicate-id reply means an earlier try got there: that order is adopted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from steadyhand.brokers.base import DuplicateClientOrderId, TransientBrokerError, UnknownOutcome
from steadyhand.domain import BrokerOrder, OrderSpec
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

ATTEMPTS = 3  # per submission, inside one handler
TRANSIENT = (TransientBrokerError, UnknownOutcome)


def submit_with_retries(call: Callable[..., Any], spec: OrderSpec, looked_up: bool,
                        give_up: Callable[[], bool]) -> BrokerOrder:
    """Submit ``spec`` through ``call(op, *args)`` (the OMS's broker call); ``looked_up``: the
    broker is known not to have this id yet; ``give_up()`` true stops the retries (circuit open).
    Raises OrderRejected, or the last BrokerError when the attempts ran out."""
    cid = spec.client_order_id
    retrying = Retrying(
        stop=stop_after_attempt(ATTEMPTS) | (lambda _state: give_up()),
        wait=wait_exponential(multiplier=0.05, max=0.4),
        retry=retry_if_exception_type(TRANSIENT),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            if not looked_up:  # before any resubmission: did an earlier try get there?
                found = call("get_by_client_id", cid)
                if found is not None:
                    return found
            looked_up = False
            try:
                return call("submit", spec)
            except DuplicateClientOrderId:
                found = call("get_by_client_id", cid)  # accepted earlier: adopt, never resubmit
                if found is None:
                    raise UnknownOutcome(f"{cid}: duplicate id but not found") from None
                return found
    raise AssertionError("unreachable")  # pragma: no cover
