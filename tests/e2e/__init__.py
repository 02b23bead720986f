"""e2e tier: real Envoy, real gRPC xDS clients, Prometheus, the demo, the Dockerfile and the
other outside tools (buf, a fresh interpreter): everything end to end."""
