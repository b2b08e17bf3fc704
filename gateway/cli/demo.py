"""The demo tenant of ``make run``: created through the same service as the API."""

from __future__ import annotations

from gateway.config import Settings
from gateway.redis.store import Store, TenantSettings
from gateway.rules.admin import AdminService, UserSpec, e164_number
from gateway.rules.clock import SystemClock

ACTOR = "make-run-demo"  # the audit trail's "who" for what the demo set-up creates


async def create_demo_tenant(settings: Settings) -> None:
    demo = settings.demo_tenant
    if demo is None or not settings.redis_url:
        return
    store = Store.for_settings(settings)
    admin = AdminService(settings, store, SystemClock())
    try:
        await store.load_functions()
        await admin.put_tenant(
            demo.id, TenantSettings(demo.name, demo.currency, demo.timezone, False, None), ACTOR
        )
        for u in demo.users:
            numbers = tuple(e164_number(n, "numbers") for n in u.numbers)
            await admin.put_user(demo.id, u.id, UserSpec(u.country, u.plan, u.dial_out, True,
                                                         None, None, numbers), ACTOR)
        for n in demo.toll_free_numbers:
            await admin.put_tollfree(demo.id, e164_number(n, "toll_free_numbers",
                                                          toll_free=True), ACTOR)
        if demo.credits_micro:
            # Keyed by the amount: a restart does not top the demo wallet up again.
            await admin.topup(demo.id, f"demo-initial-{demo.credits}", demo.credits_micro, ACTOR)
    finally:
        await store.close()
    print(demo_instructions(settings))


def demo_instructions(settings: Settings) -> str:
    demo = settings.demo_tenant
    assert demo is not None
    base = f"http://{settings.http_host}:{settings.http_port}/v1/tenants/{demo.id}"
    token = settings.operator_token or "<CALLGATE_OPERATOR_TOKEN>"
    first = demo.users[0] if demo.users else None
    user = first.id if first else "alice"
    auth = f'-H "Authorization: Bearer {token}"'
    js = '-H "Content-Type: application/json"'
    return f"""
Demo tenant "{demo.id}" is ready. Operator token: {token}

# an allowed domestic call (US user calling New York)
curl -s {auth} {js} -X POST {base}/calls \\
  -d '{{"call_id": "demo-1", "direction": "outbound", "user_id": "{user}", "to": "+12125550123"}}'

# its end after 61 seconds: 2 pool minutes
curl -s {auth} {js} -X POST {base}/calls/demo-1/end -d '{{"duration_seconds": 61}}'

# a denied call: dave has no calling plan
curl -s {auth} {js} -X POST {base}/calls \\
  -d '{{"call_id": "demo-2", "direction": "outbound", "user_id": "dave", "to": "+12125550123"}}'

# the tenant's pools and credits
curl -s {auth} {base}/pools
curl -s {auth} {base}/credits
"""
