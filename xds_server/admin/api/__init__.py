"""Generated admin API code: do not edit (see proto/generate.py)."""
