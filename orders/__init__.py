"""The OMS's logic, driven by ``actors/oms.py``: the order journal, reconciliation, the circuit breaker."""
