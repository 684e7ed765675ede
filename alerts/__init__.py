"""Alerts: routing (``routes``), the durable outbox (``outbox``) and apprise delivery (``delivery``)."""
