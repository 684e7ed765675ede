"""``steadyhand exchange serve``: the local exchange's servers, one module per protocol face.

:mod:`.alpaca` (Alpaca's REST API) with :mod:`.alpaca_streams` (its websockets) on Starlette and
uvicorn, :mod:`.app` the process (the app, the runners, credentials and the test knobs); ``tws``
(the TWS socket protocol for ib_async, its own asyncio server on the same book and clock).
"""

from steadyhand.sim.server.app import (
    INFO_FILE,
    KEY_ENV,
    LOOPBACK,
    SECRET_ENV,
    ExchangeServer,
    FaultRule,
    ServerThread,
    cmd_serve,
    credentials_from_env,
)

__all__ = ["INFO_FILE", "KEY_ENV", "LOOPBACK", "SECRET_ENV", "ExchangeServer", "FaultRule", "ServerThread",
           "cmd_serve", "credentials_from_env"]
