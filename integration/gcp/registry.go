package main

// The registry as this server understands it, and its translation to Envoy resources.
//
// Only the part of meshd's registry schema that the side-by-side benchmark writes is read
// (docs/registry.md has the whole schema): services ({"protocol", "port"}), endpoints
// ({"address", "port", "weight"}), HTTP listeners ({"address", "port", "nodes"}) and routes
// with hosts, a prefix match and one destination. The resources are shaped as meshd
// translates those entries (integration/bench_gcp.py compares the two servers' resources
// for a small registry before it measures anything): a cluster per service over EDS, one
// ClusterLoadAssignment per service, a Listener per HTTP listener with its
// HttpConnectionManager over RDS, and one RouteConfiguration per listener with a virtual
// host per route host and one per service (its default host).

import (
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	ratelimit "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type serviceEntry struct {
	Protocol string `json:"protocol"`
	Port     uint32 `json:"port"`
}

type endpointEntry struct {
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	Weight  uint32 `json:"weight"`
}

type listenerEntry struct {
	Address  string   `json:"address"`
	Port     uint32   `json:"port"`
	Protocol string   `json:"protocol"`
	Nodes    []string `json:"nodes"`
}

type routeEntry struct {
	Listener string   `json:"listener"`
	Hosts    []string `json:"hosts"`
	Match    struct {
		Prefix string `json:"prefix"`
	} `json:"match"`
	Destinations []struct {
		Service string `json:"service"`
	} `json:"destinations"`
}

// serviceState is one service: its entry and its endpoints by id.
type serviceState struct {
	entry     *serviceEntry
	endpoints map[string]endpointEntry
}

// Registry holds the entries read from etcd, by kind.
type Registry struct {
	prefix    string
	services  map[string]*serviceState // "ns/name"
	listeners map[string]listenerEntry
	routes    map[string]routeEntry // "ns/name"
}

// Dirty says what an applied batch of entries changed.
type Dirty struct {
	Services  map[string]bool // services whose ClusterLoadAssignment must be rebuilt
	Clusters  bool            // the set of services or a service entry changed
	Listeners bool
	Routes    bool
}

func (d *Dirty) any() bool {
	return len(d.Services) > 0 || d.Clusters || d.Listeners || d.Routes
}

// NewRegistry is an empty registry whose keys start with prefix.
func NewRegistry(prefix string) *Registry {
	return &Registry{
		prefix:    prefix,
		services:  map[string]*serviceState{},
		listeners: map[string]listenerEntry{},
		routes:    map[string]routeEntry{},
	}
}

func newDirty() *Dirty { return &Dirty{Services: map[string]bool{}} }

func (r *Registry) service(ref string) *serviceState {
	s := r.services[ref]
	if s == nil {
		s = &serviceState{endpoints: map[string]endpointEntry{}}
		r.services[ref] = s
	}
	return s
}

// Apply folds one put (value != nil) or delete (value == nil) of key into the registry.
// A value that does not parse is ignored, as meshd keeps the last good one.
func (r *Registry) Apply(key string, value []byte, dirty *Dirty) {
	rest, ok := strings.CutPrefix(key, r.prefix)
	if !ok {
		return
	}
	parts := strings.Split(rest, "/")
	switch {
	case parts[0] == "services" && len(parts) == 3:
		ref := parts[1] + "/" + parts[2]
		s := r.service(ref)
		if value == nil {
			s.entry = nil
		} else {
			var e serviceEntry
			if json.Unmarshal(value, &e) != nil {
				return
			}
			s.entry = &e
		}
		dirty.Clusters, dirty.Routes = true, true
		dirty.Services[ref] = true
	case parts[0] == "endpoints" && len(parts) == 4:
		ref := parts[1] + "/" + parts[2]
		s := r.service(ref)
		if value == nil {
			delete(s.endpoints, parts[3])
		} else {
			var e endpointEntry
			if json.Unmarshal(value, &e) != nil {
				return
			}
			s.endpoints[parts[3]] = e
		}
		dirty.Services[ref] = true
	case parts[0] == "listeners" && len(parts) == 2:
		if value == nil {
			delete(r.listeners, parts[1])
		} else {
			var e listenerEntry
			if json.Unmarshal(value, &e) != nil {
				return
			}
			r.listeners[parts[1]] = e
		}
		dirty.Listeners, dirty.Routes = true, true
	case parts[0] == "routes" && len(parts) == 3:
		ref := parts[1] + "/" + parts[2]
		if value == nil {
			delete(r.routes, ref)
		} else {
			var e routeEntry
			if json.Unmarshal(value, &e) != nil {
				return
			}
			r.routes[ref] = e
		}
		dirty.Routes = true
	}
}

// refs are the services in force (those with an entry), sorted as meshd sorts them:
// by namespace, then name.
func (r *Registry) refs() []string {
	out := make([]string, 0, len(r.services))
	for ref, s := range r.services {
		if s.entry != nil {
			out = append(out, ref)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		ni, nj := strings.SplitN(out[i], "/", 2), strings.SplitN(out[j], "/", 2)
		if ni[0] != nj[0] {
			return ni[0] < nj[0]
		}
		return ni[1] < nj[1]
	})
	return out
}

// clusterName is meshd's Envoy name of a service's cluster: "<name>.<ns>".
func clusterName(ref string) string {
	ns, name, _ := strings.Cut(ref, "/")
	return name + "." + ns
}

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		ResourceApiVersion:    core.ApiVersion_V3,
	}
}

// Clusters is one EDS cluster per service.
func (r *Registry) Clusters() []types.Resource {
	refs := r.refs()
	out := make([]types.Resource, 0, len(refs))
	for _, ref := range refs {
		name := clusterName(ref)
		out = append(out, &cluster.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{
				EdsConfig:   adsSource(),
				ServiceName: name,
			},
		})
	}
	return out
}

// Assignment is a service's ClusterLoadAssignment (nil once the service is gone): its
// endpoints in one locality, ordered by id, each weighted (100 by default).
func (r *Registry) Assignment(ref string) *endpoint.ClusterLoadAssignment {
	s := r.services[ref]
	if s == nil || s.entry == nil {
		return nil
	}
	ids := make([]string, 0, len(s.endpoints))
	for id := range s.endpoints {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	group := &endpoint.LocalityLbEndpoints{Locality: &core.Locality{}}
	var total uint32
	for _, id := range ids {
		e := s.endpoints[id]
		port, weight := e.Port, e.Weight
		if port == 0 {
			port = s.entry.Port
		}
		if weight == 0 {
			weight = 100
		}
		total += weight
		group.LbEndpoints = append(group.LbEndpoints, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: &core.Address{Address: &core.Address_SocketAddress{
					SocketAddress: &core.SocketAddress{
						Address:       e.Address,
						PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
					},
				}},
			}},
			LoadBalancingWeight: wrapperspb.UInt32(weight),
		})
	}
	cla := &endpoint.ClusterLoadAssignment{ClusterName: clusterName(ref)}
	if len(group.LbEndpoints) > 0 {
		group.LoadBalancingWeight = wrapperspb.UInt32(total)
		cla.Endpoints = []*endpoint.LocalityLbEndpoints{group}
	}
	return cla
}

// Assignments are every service's ClusterLoadAssignment, by cluster name.
func (r *Registry) Assignments() map[string]types.Resource {
	out := make(map[string]types.Resource, len(r.services))
	for ref := range r.services {
		if cla := r.Assignment(ref); cla != nil {
			out[cla.ClusterName] = cla
		}
	}
	return out
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// Listeners are the HTTP listeners whose nodes globs match nodeCluster.
func (r *Registry) Listeners(nodeCluster string) []types.Resource {
	names := make([]string, 0, len(r.listeners))
	for name, l := range r.listeners {
		if l.Protocol != "" && l.Protocol != "http" {
			continue // TCP listeners are not part of this benchmark
		}
		nodes := l.Nodes
		if len(nodes) == 0 {
			nodes = []string{"*"}
		}
		for _, glob := range nodes {
			if ok, _ := path.Match(glob, nodeCluster); ok {
				names = append(names, name)
				break
			}
		}
	}
	sort.Strings(names)
	out := make([]types.Resource, 0, len(names))
	for _, name := range names {
		l := r.listeners[name]
		manager := &hcm.HttpConnectionManager{
			StatPrefix: name,
			RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
				ConfigSource:    adsSource(),
				RouteConfigName: name,
			}},
			HttpFilters: []*hcm.HttpFilter{
				{
					Name: "envoy.filters.http.local_ratelimit",
					ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(
						&ratelimit.LocalRateLimit{StatPrefix: "http_local_rate_limit"})},
				},
				{
					Name:       "envoy.filters.http.fault",
					ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&fault.HTTPFault{})},
				},
				{
					Name:       "envoy.filters.http.router",
					ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&router.Router{})},
				},
			},
		}
		out = append(out, &listener.Listener{
			Name: name,
			Address: &core.Address{Address: &core.Address_SocketAddress{
				SocketAddress: &core.SocketAddress{
					Address:       l.Address,
					PortSpecifier: &core.SocketAddress_PortValue{PortValue: l.Port},
				},
			}},
			FilterChains: []*listener.FilterChain{{
				Filters: []*listener.Filter{{
					Name:       "envoy.filters.network.http_connection_manager",
					ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(manager)},
				}},
			}},
		})
	}
	return out
}

// RouteConfigs are one RouteConfiguration per HTTP listener: a virtual host per route host
// (sorted), then every HTTP service's default host ("<name>.<ns>", with its port and any).
func (r *Registry) RouteConfigs() []types.Resource {
	refs := r.refs()
	names := make([]string, 0, len(r.listeners))
	for name, l := range r.listeners {
		if l.Protocol == "" || l.Protocol == "http" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	routeKeys := make([]string, 0, len(r.routes))
	for key := range r.routes {
		routeKeys = append(routeKeys, key)
	}
	sort.Strings(routeKeys)
	out := make([]types.Resource, 0, len(names))
	for _, listenerName := range names {
		byHost := map[string][]*route.Route{}
		for _, key := range routeKeys {
			e := r.routes[key]
			if ok, _ := path.Match(e.Listener, listenerName); !ok || len(e.Destinations) == 0 {
				continue
			}
			ns, _, _ := strings.Cut(key, "/")
			dest := e.Destinations[0].Service
			if !strings.Contains(dest, "/") {
				dest = ns + "/" + dest
			}
			prefix := e.Match.Prefix
			if prefix == "" {
				prefix = "/"
			}
			hosts := e.Hosts
			if len(hosts) == 0 {
				hosts = []string{"*"}
			}
			for _, host := range hosts {
				byHost[host] = append(byHost[host], &route.Route{
					Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix}},
					Action: &route.Route_Route{Route: &route.RouteAction{
						ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName(dest)},
					}},
					Name:       key,
					StatPrefix: key,
				})
			}
		}
		hosts := make([]string, 0, len(byHost))
		for host := range byHost {
			hosts = append(hosts, host)
		}
		sort.Strings(hosts)
		rc := &route.RouteConfiguration{Name: listenerName}
		for _, host := range hosts {
			rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
				Name: host, Domains: []string{host}, Routes: byHost[host],
			})
		}
		for _, ref := range refs {
			s := r.services[ref].entry
			if s.Protocol == "tcp" {
				continue
			}
			host := clusterName(ref)
			rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
				Name:    "service:" + host,
				Domains: []string{host, fmt.Sprintf("%s:%d", host, s.Port), host + ":*"},
				Routes: []*route.Route{{
					Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_Route{Route: &route.RouteAction{
						ClusterSpecifier: &route.RouteAction_Cluster{Cluster: host},
					}},
					Name: "default:" + host,
				}},
			})
		}
		out = append(out, rc)
	}
	return out
}
