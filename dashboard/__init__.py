"""What the bot knows, made visible: the book for ``status``, the web dashboard, ``/stream``, ``/metrics``.

``book.py`` and ``status.py`` are pure reads of the store (the CLI and the portfolio import them);
the web app and its actor shell import Starlette and uvicorn only when the dashboard runs.
"""
