"""Alerts and webhooks: ``alerts`` (a tenant's settings and webhooks, validated and stored),
``notifier`` (delivers alert events to webhooks, at least once, off the call path) and
``webhooks`` (signatures, the guard against internal destinations).

Depends on gateway.rules (money, clock) and gateway.redis.
"""
