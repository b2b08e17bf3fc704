"""Redis: ``store`` (the function library in lua/ and one typed call per operation),
``client`` (the lean auto-pipelined client of the call path), ``keys`` (the whole keyspace)
and ``server`` (starting and supervising local redis-server processes).

Depends on the root modules only (config, errors, metrics).
"""
