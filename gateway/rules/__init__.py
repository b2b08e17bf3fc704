"""The rules: what the gateway decides around its one Redis call per request.

``calls`` (call control: classify, rate, one FCALL, the answer), ``admin`` (tenants, users,
credits, toll-free numbers, pools), ``voids`` (undoing an allow nobody heard), ``numbers``
(destination classification), ``rating`` and ``decks`` (rate decks), ``money`` (integers
inside, decimal strings outside), ``clock`` (time, injectable), ``refusals`` (a function's
refusal as a domain error). The rules that must be atomic live in lua/, called through
gateway.redis.store.

Depends on gateway.redis and the root modules only.
"""
