"""Fixtures that start a real Envoy and loopback backends (filled in by the harness work)."""
