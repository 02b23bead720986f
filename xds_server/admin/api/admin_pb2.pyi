import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_SERVICE: _ClassVar[Kind]
    KIND_ENDPOINT: _ClassVar[Kind]
    KIND_ROUTE: _ClassVar[Kind]
    KIND_LISTENER: _ClassVar[Kind]
    KIND_NAMESPACE: _ClassVar[Kind]
    KIND_POLICY: _ClassVar[Kind]
    KIND_SECRET: _ClassVar[Kind]

class ApplyOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLY_OUTCOME_UNSPECIFIED: _ClassVar[ApplyOutcome]
    APPLY_OUTCOME_CREATED: _ClassVar[ApplyOutcome]
    APPLY_OUTCOME_UPDATED: _ClassVar[ApplyOutcome]
    APPLY_OUTCOME_UNCHANGED: _ClassVar[ApplyOutcome]

class SyncState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_STATE_UNSPECIFIED: _ClassVar[SyncState]
    SYNC_STATE_SYNCED: _ClassVar[SyncState]
    SYNC_STATE_STALE: _ClassVar[SyncState]
    SYNC_STATE_NACKED: _ClassVar[SyncState]
    SYNC_STATE_NOT_SENT: _ClassVar[SyncState]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_REGISTRY_PUT: _ClassVar[EventType]
    EVENT_TYPE_REGISTRY_DELETE: _ClassVar[EventType]
    EVENT_TYPE_REGISTRY_REJECTED: _ClassVar[EventType]
    EVENT_TYPE_PUSH: _ClassVar[EventType]
    EVENT_TYPE_NACK: _ClassVar[EventType]
    EVENT_TYPE_PROXY_CONNECTED: _ClassVar[EventType]
    EVENT_TYPE_PROXY_DISCONNECTED: _ClassVar[EventType]
    EVENT_TYPE_HEALTH: _ClassVar[EventType]

class HealthStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATUS_UNSPECIFIED: _ClassVar[HealthStatus]
    HEALTH_STATUS_HEALTHY: _ClassVar[HealthStatus]
    HEALTH_STATUS_UNHEALTHY: _ClassVar[HealthStatus]
    HEALTH_STATUS_UNKNOWN: _ClassVar[HealthStatus]
    HEALTH_STATUS_DRAINING: _ClassVar[HealthStatus]

class NodeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_KIND_UNSPECIFIED: _ClassVar[NodeKind]
    NODE_KIND_SERVICE: _ClassVar[NodeKind]
    NODE_KIND_PROXY_GROUP: _ClassVar[NodeKind]

class ScalingAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCALING_ACTION_UNSPECIFIED: _ClassVar[ScalingAction]
    SCALING_ACTION_OK: _ClassVar[ScalingAction]
    SCALING_ACTION_SCALE_UP: _ClassVar[ScalingAction]
    SCALING_ACTION_SCALE_DOWN: _ClassVar[ScalingAction]
KIND_UNSPECIFIED: Kind
KIND_SERVICE: Kind
KIND_ENDPOINT: Kind
KIND_ROUTE: Kind
KIND_LISTENER: Kind
KIND_NAMESPACE: Kind
KIND_POLICY: Kind
KIND_SECRET: Kind
APPLY_OUTCOME_UNSPECIFIED: ApplyOutcome
APPLY_OUTCOME_CREATED: ApplyOutcome
APPLY_OUTCOME_UPDATED: ApplyOutcome
APPLY_OUTCOME_UNCHANGED: ApplyOutcome
SYNC_STATE_UNSPECIFIED: SyncState
SYNC_STATE_SYNCED: SyncState
SYNC_STATE_STALE: SyncState
SYNC_STATE_NACKED: SyncState
SYNC_STATE_NOT_SENT: SyncState
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_REGISTRY_PUT: EventType
EVENT_TYPE_REGISTRY_DELETE: EventType
EVENT_TYPE_REGISTRY_REJECTED: EventType
EVENT_TYPE_PUSH: EventType
EVENT_TYPE_NACK: EventType
EVENT_TYPE_PROXY_CONNECTED: EventType
EVENT_TYPE_PROXY_DISCONNECTED: EventType
EVENT_TYPE_HEALTH: EventType
HEALTH_STATUS_UNSPECIFIED: HealthStatus
HEALTH_STATUS_HEALTHY: HealthStatus
HEALTH_STATUS_UNHEALTHY: HealthStatus
HEALTH_STATUS_UNKNOWN: HealthStatus
HEALTH_STATUS_DRAINING: HealthStatus
NODE_KIND_UNSPECIFIED: NodeKind
NODE_KIND_SERVICE: NodeKind
NODE_KIND_PROXY_GROUP: NodeKind
SCALING_ACTION_UNSPECIFIED: ScalingAction
SCALING_ACTION_OK: ScalingAction
SCALING_ACTION_SCALE_UP: ScalingAction
SCALING_ACTION_SCALE_DOWN: ScalingAction

class EntryRef(_message.Message):
    __slots__ = ("kind", "namespace", "service", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: Kind
    namespace: str
    service: str
    name: str
    def __init__(self, kind: _Optional[_Union[Kind, str]] = ..., namespace: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("ref", "spec", "revision", "lease", "key", "raw")
    REF_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    ref: EntryRef
    spec: _struct_pb2.Struct
    revision: int
    lease: int
    key: str
    raw: str
    def __init__(self, ref: _Optional[_Union[EntryRef, _Mapping]] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., revision: _Optional[int] = ..., lease: _Optional[int] = ..., key: _Optional[str] = ..., raw: _Optional[str] = ...) -> None: ...

class GetEntryRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: EntryRef
    def __init__(self, ref: _Optional[_Union[EntryRef, _Mapping]] = ...) -> None: ...

class GetEntryResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("kind", "namespace", "service")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    kind: Kind
    namespace: str
    service: str
    def __init__(self, kind: _Optional[_Union[Kind, str]] = ..., namespace: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "revision")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    revision: int
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class CreateEntryRequest(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class CreateEntryResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class UpdateEntryRequest(_message.Message):
    __slots__ = ("entry", "force")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    force: bool
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., force: _Optional[bool] = ...) -> None: ...

class UpdateEntryResponse(_message.Message):
    __slots__ = ("entry", "dependents")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    dependents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., dependents: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteEntryRequest(_message.Message):
    __slots__ = ("ref", "revision", "force", "dry_run")
    REF_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ref: EntryRef
    revision: int
    force: bool
    dry_run: bool
    def __init__(self, ref: _Optional[_Union[EntryRef, _Mapping]] = ..., revision: _Optional[int] = ..., force: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class DeleteEntryResponse(_message.Message):
    __slots__ = ("revision", "dependents")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    dependents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., dependents: _Optional[_Iterable[str]] = ...) -> None: ...

class ApplyEntriesRequest(_message.Message):
    __slots__ = ("entries", "dry_run", "force")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    dry_run: bool
    force: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class AppliedEntry(_message.Message):
    __slots__ = ("entry", "outcome")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    outcome: ApplyOutcome
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., outcome: _Optional[_Union[ApplyOutcome, str]] = ...) -> None: ...

class ApplyEntriesResponse(_message.Message):
    __slots__ = ("entries", "revision", "dependents")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DEPENDENTS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AppliedEntry]
    revision: int
    dependents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entries: _Optional[_Iterable[_Union[AppliedEntry, _Mapping]]] = ..., revision: _Optional[int] = ..., dependents: _Optional[_Iterable[str]] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("service", "subset", "weight")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    service: str
    subset: str
    weight: int
    def __init__(self, service: _Optional[str] = ..., subset: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class SetSplitRequest(_message.Message):
    __slots__ = ("namespace", "route", "destinations", "revision")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    route: str
    destinations: _containers.RepeatedCompositeFieldContainer[Destination]
    revision: int
    def __init__(self, namespace: _Optional[str] = ..., route: _Optional[str] = ..., destinations: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class SetSplitResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...

class RegisterEndpointRequest(_message.Message):
    __slots__ = ("namespace", "service", "id", "spec", "ttl_seconds")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    service: str
    id: str
    spec: _struct_pb2.Struct
    ttl_seconds: int
    def __init__(self, namespace: _Optional[str] = ..., service: _Optional[str] = ..., id: _Optional[str] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class RegisterEndpointResponse(_message.Message):
    __slots__ = ("entry", "lease", "ttl_seconds")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    lease: int
    ttl_seconds: int
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., lease: _Optional[int] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class KeepAliveRequest(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: int
    def __init__(self, lease: _Optional[int] = ...) -> None: ...

class KeepAliveResponse(_message.Message):
    __slots__ = ("ttl_seconds",)
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    def __init__(self, ttl_seconds: _Optional[int] = ...) -> None: ...

class ListErrorsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class RegistryError(_message.Message):
    __slots__ = ("key", "field", "reason", "revision", "last_good_kept")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LAST_GOOD_KEPT_FIELD_NUMBER: _ClassVar[int]
    key: str
    field: str
    reason: str
    revision: int
    last_good_kept: bool
    def __init__(self, key: _Optional[str] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ..., revision: _Optional[int] = ..., last_good_kept: _Optional[bool] = ...) -> None: ...

class ListErrorsResponse(_message.Message):
    __slots__ = ("errors",)
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedCompositeFieldContainer[RegistryError]
    def __init__(self, errors: _Optional[_Iterable[_Union[RegistryError, _Mapping]]] = ...) -> None: ...

class TypeStatus(_message.Message):
    __slots__ = ("type", "state", "sent_version", "acked_version", "error", "last_push", "resources")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_PUSH_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    type: str
    state: SyncState
    sent_version: str
    acked_version: str
    error: str
    last_push: _timestamp_pb2.Timestamp
    resources: int
    def __init__(self, type: _Optional[str] = ..., state: _Optional[_Union[SyncState, str]] = ..., sent_version: _Optional[str] = ..., acked_version: _Optional[str] = ..., error: _Optional[str] = ..., last_push: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resources: _Optional[int] = ...) -> None: ...

class ProxyStatus(_message.Message):
    __slots__ = ("node_id", "node_cluster", "protocol", "peer", "connected_at", "types", "replica")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    node_cluster: str
    protocol: str
    peer: str
    connected_at: _timestamp_pb2.Timestamp
    types: _containers.RepeatedCompositeFieldContainer[TypeStatus]
    replica: str
    def __init__(self, node_id: _Optional[str] = ..., node_cluster: _Optional[str] = ..., protocol: _Optional[str] = ..., peer: _Optional[str] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., types: _Optional[_Iterable[_Union[TypeStatus, _Mapping]]] = ..., replica: _Optional[str] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("id", "address", "answered", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    answered: bool
    error: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., answered: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class GetProxyStatusRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class GetProxyStatusResponse(_message.Message):
    __slots__ = ("proxies", "replicas")
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    proxies: _containers.RepeatedCompositeFieldContainer[ProxyStatus]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, proxies: _Optional[_Iterable[_Union[ProxyStatus, _Mapping]]] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class GetProxyConfigRequest(_message.Message):
    __slots__ = ("node_id", "type")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    type: str
    def __init__(self, node_id: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class ProxyResource(_message.Message):
    __slots__ = ("type", "name", "version", "json")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    type: str
    name: str
    version: str
    json: str
    def __init__(self, type: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class GetProxyConfigResponse(_message.Message):
    __slots__ = ("status", "resources")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    status: ProxyStatus
    resources: _containers.RepeatedCompositeFieldContainer[ProxyResource]
    def __init__(self, status: _Optional[_Union[ProxyStatus, _Mapping]] = ..., resources: _Optional[_Iterable[_Union[ProxyResource, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("types",)
    TYPES_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedScalarFieldContainer[EventType]
    def __init__(self, types: _Optional[_Iterable[_Union[EventType, str]]] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("type", "time", "key", "node_id", "resource_type", "version", "message", "revision")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    time: _timestamp_pb2.Timestamp
    key: str
    node_id: str
    resource_type: str
    version: str
    message: str
    revision: int
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key: _Optional[str] = ..., node_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., version: _Optional[str] = ..., message: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class GetHealthRequest(_message.Message):
    __slots__ = ("service", "namespace")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class EndpointHealth(_message.Message):
    __slots__ = ("id", "zone", "address", "status", "checkers", "healthy_reports", "unhealthy_reports")
    ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHECKERS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_REPORTS_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_REPORTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    zone: str
    address: str
    status: HealthStatus
    checkers: _containers.RepeatedScalarFieldContainer[str]
    healthy_reports: int
    unhealthy_reports: int
    def __init__(self, id: _Optional[str] = ..., zone: _Optional[str] = ..., address: _Optional[str] = ..., status: _Optional[_Union[HealthStatus, str]] = ..., checkers: _Optional[_Iterable[str]] = ..., healthy_reports: _Optional[int] = ..., unhealthy_reports: _Optional[int] = ...) -> None: ...

class ZoneHealth(_message.Message):
    __slots__ = ("zone", "healthy", "total")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    zone: str
    healthy: int
    total: int
    def __init__(self, zone: _Optional[str] = ..., healthy: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class ServiceHealth(_message.Message):
    __slots__ = ("namespace", "name", "healthy", "total", "zones", "endpoints", "check_mode", "all_unhealthy")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CHECK_MODE_FIELD_NUMBER: _ClassVar[int]
    ALL_UNHEALTHY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    healthy: int
    total: int
    zones: _containers.RepeatedCompositeFieldContainer[ZoneHealth]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointHealth]
    check_mode: str
    all_unhealthy: bool
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., healthy: _Optional[int] = ..., total: _Optional[int] = ..., zones: _Optional[_Iterable[_Union[ZoneHealth, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[EndpointHealth, _Mapping]]] = ..., check_mode: _Optional[str] = ..., all_unhealthy: _Optional[bool] = ...) -> None: ...

class GetHealthResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceHealth]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceHealth, _Mapping]]] = ...) -> None: ...

class GetTopologyRequest(_message.Message):
    __slots__ = ("window_seconds",)
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    window_seconds: int
    def __init__(self, window_seconds: _Optional[int] = ...) -> None: ...

class TopologyNode(_message.Message):
    __slots__ = ("id", "kind")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: NodeKind
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[NodeKind, str]] = ...) -> None: ...

class TopologyEdge(_message.Message):
    __slots__ = ("source", "destination", "rps", "error_rate", "in_flight", "allowed", "idle", "endpoints")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    rps: float
    error_rate: float
    in_flight: int
    allowed: bool
    idle: bool
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointLoad]
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ..., rps: _Optional[float] = ..., error_rate: _Optional[float] = ..., in_flight: _Optional[int] = ..., allowed: _Optional[bool] = ..., idle: _Optional[bool] = ..., endpoints: _Optional[_Iterable[_Union[EndpointLoad, _Mapping]]] = ...) -> None: ...

class EndpointLoad(_message.Message):
    __slots__ = ("subset", "endpoint", "rps", "error_rate", "in_flight")
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    subset: str
    endpoint: str
    rps: float
    error_rate: float
    in_flight: int
    def __init__(self, subset: _Optional[str] = ..., endpoint: _Optional[str] = ..., rps: _Optional[float] = ..., error_rate: _Optional[float] = ..., in_flight: _Optional[int] = ...) -> None: ...

class GetTopologyResponse(_message.Message):
    __slots__ = ("nodes", "edges", "window_seconds", "replicas")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[TopologyNode]
    edges: _containers.RepeatedCompositeFieldContainer[TopologyEdge]
    window_seconds: float
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[TopologyNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[TopologyEdge, _Mapping]]] = ..., window_seconds: _Optional[float] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class GetRecommendationsRequest(_message.Message):
    __slots__ = ("window_seconds",)
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    window_seconds: int
    def __init__(self, window_seconds: _Optional[int] = ...) -> None: ...

class Scaling(_message.Message):
    __slots__ = ("observed_rps", "target_rps_per_endpoint", "current_endpoints", "recommended_endpoints", "action")
    OBSERVED_RPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_RPS_PER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    observed_rps: float
    target_rps_per_endpoint: int
    current_endpoints: int
    recommended_endpoints: int
    action: ScalingAction
    def __init__(self, observed_rps: _Optional[float] = ..., target_rps_per_endpoint: _Optional[int] = ..., current_endpoints: _Optional[int] = ..., recommended_endpoints: _Optional[int] = ..., action: _Optional[_Union[ScalingAction, str]] = ...) -> None: ...

class ServiceRecommendation(_message.Message):
    __slots__ = ("namespace", "name", "scaling")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALING_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    scaling: Scaling
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., scaling: _Optional[_Union[Scaling, _Mapping]] = ...) -> None: ...

class GetRecommendationsResponse(_message.Message):
    __slots__ = ("services", "window_seconds", "replicas")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceRecommendation]
    window_seconds: float
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceRecommendation, _Mapping]]] = ..., window_seconds: _Optional[float] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class GetServiceMetricsRequest(_message.Message):
    __slots__ = ("service", "namespace", "window_seconds")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    service: str
    namespace: str
    window_seconds: int
    def __init__(self, service: _Optional[str] = ..., namespace: _Optional[str] = ..., window_seconds: _Optional[int] = ...) -> None: ...

class ServiceMetrics(_message.Message):
    __slots__ = ("namespace", "name", "rps", "error_rps", "error_rate", "in_flight", "duration_ms", "endpoints")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    rps: float
    error_rps: float
    error_rate: float
    in_flight: int
    duration_ms: float
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointLoad]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., rps: _Optional[float] = ..., error_rps: _Optional[float] = ..., error_rate: _Optional[float] = ..., in_flight: _Optional[int] = ..., duration_ms: _Optional[float] = ..., endpoints: _Optional[_Iterable[_Union[EndpointLoad, _Mapping]]] = ...) -> None: ...

class GetServiceMetricsResponse(_message.Message):
    __slots__ = ("services", "window_seconds", "replicas")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceMetrics]
    window_seconds: float
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceMetrics, _Mapping]]] = ..., window_seconds: _Optional[float] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class CheckPolicyRequest(_message.Message):
    __slots__ = ("source", "target", "path", "method")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    path: str
    method: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ..., path: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class CheckPolicyResponse(_message.Message):
    __slots__ = ("allowed", "policy", "reason", "default_policy", "revision")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    policy: str
    reason: str
    default_policy: str
    revision: int
    def __init__(self, allowed: _Optional[bool] = ..., policy: _Optional[str] = ..., reason: _Optional[str] = ..., default_policy: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class JoinTokenInfo(_message.Message):
    __slots__ = ("id", "identity", "expires")
    ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    id: str
    identity: str
    expires: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., identity: _Optional[str] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("identity", "ttl_seconds")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    identity: str
    ttl_seconds: int
    def __init__(self, identity: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("info", "token", "revision")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    info: JoinTokenInfo
    token: str
    revision: int
    def __init__(self, info: _Optional[_Union[JoinTokenInfo, _Mapping]] = ..., token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ListJoinTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJoinTokensResponse(_message.Message):
    __slots__ = ("tokens", "revision")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[JoinTokenInfo]
    revision: int
    def __init__(self, tokens: _Optional[_Iterable[_Union[JoinTokenInfo, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class RevokeJoinTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeJoinTokenResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class GetTrustBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTrustBundleResponse(_message.Message):
    __slots__ = ("bundle_pem", "revision")
    BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    bundle_pem: str
    revision: int
    def __init__(self, bundle_pem: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...
