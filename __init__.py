"""steadyhand: a supervised-actor paper-trading bot.

The repository root is the ``steadyhand`` package (see pyproject.toml), so code imports
``steadyhand.actors.messages``, ``steadyhand.state.store`` and so on.
"""

__version__ = "0.1.0"
