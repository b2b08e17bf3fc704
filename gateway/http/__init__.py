"""The HTTP side: what a switch or an operator talks to.

``app`` builds the aiohttp application; ``fastpath`` serves the three call-control POSTs
without aiohttp's per-request machinery; ``web`` holds what every handler shares (context,
guards, answers, the route table type); ``problems`` answers each error with its problem
document (one table, for both); ``api`` and ``api_*`` are the handlers, one module per
part of api.md; ``openapi`` describes them; ``auth`` and ``tokens`` say who is asking;
``observe`` samples Redis for /metrics and /readyz.

Depends on gateway.rules, gateway.redis, gateway.ledger (CDR reads), gateway.notify; nothing
below imports it.
"""
