"""steadyhand: a supervised-actor paper-trading bot.

The repository root is the ``steadyhand`` package (see pyproject.toml), so code imports
``steadyhand.actors.messages``, ``steadyhand.state.store`` and so on.

``from steadyhand import Strategy`` is the plug-in API (``strategies/base.py``); it is imported
lazily so ``import steadyhand`` stays cheap (no pandas) for the CLI's light commands.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Strategy", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Strategy":
        from steadyhand.strategies.base import Strategy

        return Strategy
    raise AttributeError(f"module 'steadyhand' has no attribute {name!r}")
