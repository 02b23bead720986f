"""The mesh CA and the workload certificates it issues (pure: clocks come in as arguments)."""
