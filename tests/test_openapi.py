"""GET /openapi.json: an OpenAPI 3.1 document of exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

from gateway.http.openapi import described, routed
from tests.support.gwclient import Gateway

METHODS = {"get", "put", "post", "delete", "patch"}


async def test_document_and_router_describe_the_same_operations(gw: Gateway) -> None:
    resp = await gw.client.get("/openapi.json")  # no token needed
    assert resp.status == 200 and resp.content_type == "application/json"
    doc: dict[str, Any] = await resp.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m in METHODS}
    assert documented == routed(gw.client.app)
    # Every route of the app has a description (none left out by the filter above).
    assert routed(gw.client.app) <= described()


async def test_every_request_body_rejects_unknown_fields(gw: Gateway) -> None:
    doc = await (await gw.client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    bodies = 0
    for ops in doc["paths"].values():
        for op in ops.values():
            for ctype, media in op.get("requestBody", {}).get("content", {}).items():
                if ctype != "application/json":
                    continue
                bodies += 1
                name = media["schema"]["$ref"].rsplit("/", 1)[1]
                assert schemas[name]["additionalProperties"] is False, name
    assert bodies == 10  # 8, and the alerts and webhook bodies


async def test_every_guarded_operation_documents_its_problems(gw: Gateway) -> None:
    doc = await (await gw.client.get("/openapi.json")).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if not path.startswith("/v1/"):
                assert op["security"] == []
                continue
            for status in ("400", "401", "403", "404"):
                assert status in op["responses"], (method, path, status)
            if "requestBody" in op:
                assert "413" in op["responses"], (method, path)
