"""Webhook deliveries: the signature, and the guard against internal destinations.

A delivery is a POST of the event's JSON with ``Callgate-Event-Id`` and
``Callgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` under the
webhook's secret (api.md, Notifications). A receiver recomputes the HMAC over the bytes it
received and compares in constant time (docs/notifications.md).

Destinations in loopback, private, link-local and other non-global networks are refused
unless the operator allows them (``CALLGATE_WEBHOOK_ALLOW_PRIVATE=1``): at registration,
and at every delivery after DNS resolution, by the resolver the delivering client connects
through (:class:`GuardedResolver`), so that the addresses checked are the addresses used and
a DNS change cannot turn a webhook against the internal network.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

SIGNATURE_HEADER = "Callgate-Signature"
EVENT_ID_HEADER = "Callgate-Event-Id"
SECRET_MIN_CHARS = 32
URL_MAX_CHARS = 2048


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Callgate-Signature`` header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (the docs' example): recompute and compare in constant time."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts or not parts["t"].isdigit():
        return False
    expected = signature(secret, int(parts["t"]), body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts["v1"])


class DestinationRefused(Exception):
    """The destination is not allowed (internal address, bad URL, does not resolve)."""


def address_refusal(address: str) -> str | None:
    """Why an IP address may not be a destination, or None when it is a global one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved \
            or ip.is_unspecified or not ip.is_global:
        return f"{ip} is in a private or reserved network"
    return None


def url_parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL; raises DestinationRefused when unusable."""
    if len(url) > URL_MAX_CHARS:
        raise DestinationRefused(f"must be at most {URL_MAX_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise DestinationRefused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise DestinationRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("must not carry credentials")
    if parts.fragment:
        raise DestinationRefused("must not have a fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` (an IP literal is its own address)."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DestinationRefused(f"host {host} does not resolve: {exc.strerror or exc}") \
            from None
    return sorted({str(info[4][0]) for info in infos})


async def check_destination(url: str, allow_private: bool) -> None:
    """Raises DestinationRefused when ``url`` may not receive webhooks (registration)."""
    _scheme, host, port = url_parts(url)
    if allow_private:
        return
    for address in await resolve(host, port):
        why = address_refusal(address)
        if why is not None:
            raise DestinationRefused(f"host {host}: {why}")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing (OSError: the delivery fails as unreachable) a host
    with any internal address unless private destinations are allowed."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for r in results:
                why = address_refusal(str(r["host"]))
                if why is not None:
                    raise OSError(f"destination refused: host {host}: {why}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def literal_refusal(url: str, allow_private: bool) -> str | None:
    """At delivery: a URL whose host is an IP literal never reaches the resolver, so it is
    checked here. None when allowed."""
    _scheme, host, _port = url_parts(url)
    if allow_private:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return address_refusal(host)


def redact(webhook: dict[str, Any]) -> dict[str, Any]:
    """A webhook record as the API shows it: never its secret."""
    return {k: v for k, v in webhook.items() if k != "secret"}
