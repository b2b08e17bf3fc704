"""Test-only harnesses: a Redis Cluster with replicas, a `callgate serve` process, a raw
HTTP/1.1 client, and the truth checker (what a client was answered against what Redis
holds)."""
