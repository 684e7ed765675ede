"""Interactive Brokers (TWS / IB Gateway, paper) on ib_async: ``broker.py`` the Broker adapter,
``feed.py`` bars for the feed actor, ``wire.py`` the translation, ``ids.py`` the persisted ids,
``loop.py`` the thread that owns the ``IB`` object."""
