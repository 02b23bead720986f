"""meshd's web console (``meshd --console``): see :mod:`xds_server.console.server`."""

from xds_server.console.server import Console

__all__ = ["Console"]
