"""Metrics and traces of every role: Prometheus histograms, OpenTelemetry spans."""
