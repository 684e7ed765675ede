"""The actors: thin shells around the logic in the concept packages.

The pattern every actor file follows:

- **An actor is a shell**: messages in (``handlers``, one method per message type), messages out
  (``tell_peer``, ``send``, ``alert``), timers (``after``, ``every``, ``hurry``), its process's
  state and logging. It decides *whom to tell what*, not *how*: no SQL beyond its own table
  writes, no business rules, no broker or market specifics.
- **The logic lives in its concept's package** and is plain Python, tested without actors:
  ``risk/checks.py`` behind ``risk.py``, ``data/bar_checks.py`` behind ``feed.py``,
  ``strategies/sma.py`` behind ``strategy.py``, ``orders/`` (journal, reconcile, circuit) behind
  ``oms.py``, ``alerts/`` behind ``alerter.py``, ``control/operator.py`` (mixed into) the
  supervisor. Brokers come from the registry (``steadyhand.brokers``), never by name.
- **The protocol is ``messages.py``**: small frozen dataclasses, batches on the hot path; the
  things they carry are ``steadyhand.domain``'s types. Commands are imperatives (``CancelAll``,
  ``RequestHalt``), events past participles with one word for completion (``ReconcileStarted``,
  ``ReconcileCompleted``), snapshots nouns (``PositionsSnapshot``).
- **Let it crash** (``base.py``): an unhandled exception logs, exits, and the supervisor restarts
  the actor fresh from SQLite; whatever a restarted peer needs is re-sent in
  ``on_peers_changed``.

Adding an actor: a ``SteadyActor`` subclass here (``setup``, ``handlers``, ``timers``), its
logic in its concept's package, its messages in ``messages.py``, and one row in
``supervisor.CHILD_SPECS``.
"""
