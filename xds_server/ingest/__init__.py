"""Ingest: the registry contract, the validated state folded from it, and the controller
loop that feeds every input (registry, health, DNS) through translation into the cache."""
