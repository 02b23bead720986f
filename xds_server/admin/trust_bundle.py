"""GetTrustBundle: the mesh's trust bundle, as every replica keeps it in etcd.

The bundle is public (certificates only): any caller may read it, so a client can fetch
it over the admin API once it trusts meshd some other way, or read ``<prefix>ca/bundle``
from etcd for first contact (``meshctl ca get --etcd``). The CA's private key, next to it
in etcd, is never read here.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Principal
from xds_server.admin.base import Ctx, ServicerBase
from xds_server.admin.errors import AdminError

__all__ = ["TrustBundleRpcs"]

BUNDLE_KEY = "ca/bundle"
"""Where, under the registry's prefix, meshd keeps the bundle (``identity.store.ca_keys``;
the admin API reads no other key of the CA's)."""


class TrustBundleRpcs(ServicerBase):
    """GetTrustBundle."""

    async def GetTrustBundle(  # noqa: N802
        self, request: pb.GetTrustBundleRequest, context: Ctx
    ) -> Message:
        async def body(who: Principal) -> Message:
            bundle_key = self.prefix + BUNDLE_KEY
            stored = await self.registry.get(bundle_key)
            if stored is None:
                raise AdminError(
                    grpc.StatusCode.NOT_FOUND,
                    f"no trust bundle at {bundle_key} (no meshd has created the mesh CA yet)",
                )
            return pb.GetTrustBundleResponse(
                bundle_pem=stored.value.decode(), revision=stored.mod_revision
            )

        return await self._call(context, request, body)
