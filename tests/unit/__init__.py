"""Unit tier: in-process only (no network, no subprocess); ``make test-fast`` runs it."""
