"""``steadyhand exchange serve`` and its faces (Alpaca on Starlette in ``app.py``, TWS in ``tws.py``)."""
