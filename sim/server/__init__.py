"""``steadyhand exchange serve``: the local exchange's web server (Starlette on uvicorn), one module
per protocol face: :mod:`.alpaca` (REST) with :mod:`.alpaca_streams` (its websockets) now, ``tws``
next. :mod:`.app` is the process: the app, the runners, credentials and the test knobs."""

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
