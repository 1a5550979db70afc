"""Delivering the fleet's state to the tools people watch.

- ``alerts``: ``coordinator alerts``, one webhook notice per transition, from a Redis consumer group.
- ``exporter``: ``coordinator metrics``, a fleet-level Prometheus exporter reading Redis at scrape time.
- ``prometheus``: ``PrometheusHook``, a worker's own metrics (extra ``coordinator[prometheus]``).
- ``otel``: ``OpenTelemetryHook``, spans and metrics through the OpenTelemetry API (extra ``coordinator[otel]``).

Import the hooks as ``coordinator.PrometheusHook`` and ``coordinator.OpenTelemetryHook``; this package
imports none of the optional libraries by itself.
"""
