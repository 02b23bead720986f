"""Pure translation of the validated model into Envoy v3 resources, one module per concern."""

from __future__ import annotations

from xds_server.translate.translator import Delta, Translator

__all__ = ["Delta", "Translator"]
