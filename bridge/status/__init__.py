"""The status page and Prometheus metrics for store IT, on a port of their own (docs/operations.md).

``config`` is imported by :mod:`bridge.config` and stays light; the rest is loaded only when ``[status]`` is
enabled.
"""
