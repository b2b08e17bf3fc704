# syntax=docker/dockerfile:1
# callgate: the gateway plus an embedded redis-server (AOF) and SQLite ledger under /data.
# For production, point CALLGATE_REDIS_URL / CALLGATE_DATABASE_URL at managed services;
# the embedded Redis is then never started.
# Private by default, as outside a container: it runs as the unprivileged user callgate;
# /data is 0700 and everything serve writes there 0600 (callgate sets umask 077); the embedded
# Redis listens on a unix socket in /data/redis only, with a password generated on the first
# start and kept in /data/redis/requirepass. CALLGATE_OPERATOR_TOKEN, if given, must carry
# 128 bits (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# redis-server: the embedded Redis started by `callgate serve` without CALLGATE_REDIS_URL.
# tini: PID 1 that forwards SIGTERM to callgate (which stops Redis last) and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 callgate \
 && useradd --system --uid 10001 --gid callgate --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin callgate

WORKDIR /app

# Dependencies first, in their own layer, so that code changes do not reinstall them:
# install the project from a stub package, then drop it.
COPY pyproject.toml ./
RUN mkdir gateway && touch gateway/__init__.py README.md \
 && pip install . \
 && pip uninstall -y callgate \
 && rm -rf gateway README.md build *.egg-info

COPY . .
# The Lua library ships inside the package (gateway/lua links to lua/); config/ is found
# relative to the working directory (/app).
RUN pip install --no-deps . \
 && rm -rf build *.egg-info \
 && mkdir -p /data \
 && chown callgate:callgate /data \
 && chmod 0700 /data

USER callgate

ENV CALLGATE_HTTP_HOST=0.0.0.0 \
    CALLGATE_DATA_DIR=/data
VOLUME /data
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CALLGATE_HTTP_PORT', '8080') + '/healthz', timeout=2)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["callgate", "serve"]
