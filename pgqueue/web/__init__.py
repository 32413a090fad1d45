"""The web layer: ``pgqueue serve`` runs a REST API, a live dashboard and Prometheus ``/metrics`` in one process.

::

    pip install 'pgqueue[web]'
    pgqueue token create --scope admin          # prints the new token alone on the last line
    pgqueue serve --port 8080                   # http://127.0.0.1:8080/ (dashboard), /docs, /metrics

Everything is read from PostgreSQL; live updates come from LISTEN/NOTIFY. Modules, one per concept:
``server`` (the ASGI app and its lifespan), ``database`` (async pool and named queries), ``auth`` (tokens and
scopes), ``problems`` (JSON errors), ``models`` (request and response shapes), ``jobs``, ``batches``,
``schedules``, ``queues``, ``workers``, ``charts`` (JSON metrics for charts), ``alerts``, ``events`` (LISTEN and
server-sent events), ``leader`` (duties one serve process does at a time), ``metrics`` (Prometheus),
``dashboard`` (the static pages), ``cli``.

Nothing here is imported by ``import pgqueue``: the core has no web dependencies.
"""
