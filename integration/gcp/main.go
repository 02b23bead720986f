// Command gcp-server serves meshd's registry over ADS with go-control-plane, as its users
// write such a server: a SnapshotCache for CDS, LDS and RDS (one snapshot per node cluster,
// per-type versions so a route edit resends only routes), a LinearCache for EDS (one
// ClusterLoadAssignment per service, updated alone when its endpoints change), muxed by
// type URL behind one ADS server (SotW and Delta). It reads the registry from etcd as meshd
// does: one listing of the prefix, then a watch from the listed revision.
//
// It is the other side of integration/bench_gcp.py. stdout carries the lines the benchmark
// reads: "listening <port>", "ready <unix seconds> revision <rev>" once the whole listed
// registry is in the caches, and "applied <rev>" after each watch batch.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// clusterHash keys snapshots by the node's cluster, as meshd scopes its config: every proxy
// of one node cluster shares one snapshot.
type clusterHash struct{}

func (clusterHash) ID(node *core.Node) string { return node.GetCluster() }

// mesh holds the registry and publishes it into the two caches.
type mesh struct {
	mu        sync.Mutex
	registry  *Registry
	linear    *cache.LinearCache
	snapshots cache.SnapshotCache
	ready     bool
	nodes     map[string]bool // node clusters seen (or configured): each gets a snapshot
	versions  map[types.ResponseType]int
	prefix    string // of every version: a restarted server never reuses one
	clusters  cache.Resources
	routes    cache.Resources
	listeners map[string]cache.Resources // by node cluster
}

func (m *mesh) version(t types.ResponseType) string {
	m.versions[t]++
	return fmt.Sprintf("%s-%d", m.prefix, m.versions[t])
}

// publish pushes what dirty names into the caches. Called with m.mu held.
func (m *mesh) publish(dirty *Dirty) error {
	if len(dirty.Services) > 0 {
		update := make(map[string]types.Resource, len(dirty.Services))
		var remove []string
		for ref := range dirty.Services {
			if cla := m.registry.Assignment(ref); cla != nil {
				update[cla.ClusterName] = cla
			} else {
				remove = append(remove, clusterName(ref))
			}
		}
		if err := m.linear.UpdateResources(update, remove); err != nil {
			return err
		}
	}
	if !m.ready {
		return nil
	}
	if dirty.Clusters {
		m.clusters = cache.NewResources(m.version(types.Cluster), m.registry.Clusters())
	}
	if dirty.Routes {
		m.routes = cache.NewResources(m.version(types.Route), m.registry.RouteConfigs())
	}
	if dirty.Listeners {
		version := m.version(types.Listener)
		for node := range m.nodes {
			m.listeners[node] = cache.NewResources(version, m.registry.Listeners(node))
		}
	}
	if dirty.Clusters || dirty.Routes || dirty.Listeners {
		for node := range m.nodes {
			if err := m.setSnapshot(node); err != nil {
				return err
			}
		}
	}
	return nil
}

func (m *mesh) setSnapshot(node string) error {
	snap := &cache.Snapshot{}
	snap.Resources[types.Cluster] = m.clusters
	snap.Resources[types.Route] = m.routes
	snap.Resources[types.Listener] = m.listeners[node]
	return m.snapshots.SetSnapshot(context.Background(), node, snap)
}

// sawNode gives a node cluster seen for the first time its snapshot (once ready).
func (m *mesh) sawNode(node *core.Node) {
	if node == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	name := node.GetCluster()
	if m.nodes[name] {
		return
	}
	m.nodes[name] = true
	if m.ready {
		version := fmt.Sprintf("%s-%d", m.prefix, m.versions[types.Listener])
		m.listeners[name] = cache.NewResources(version, m.registry.Listeners(name))
		if err := m.setSnapshot(name); err != nil {
			log.Printf("snapshot for %q: %v", name, err)
		}
	}
}

func main() {
	etcdFlag := flag.String("etcd", "127.0.0.1:2379", "etcd endpoints, comma-separated")
	prefix := flag.String("prefix", "/mesh/", "registry key prefix")
	xds := flag.String("xds", "127.0.0.1:18000", "ADS listen address")
	nodeClusters := flag.String("node-clusters", "sidecar", "node clusters to build snapshots for before any proxy connects")
	flag.Parse()
	started := time.Now()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	ctx := context.Background()
	linear := cache.NewLinearCache(resource.EndpointType,
		cache.WithVersionPrefix(fmt.Sprintf("%d-", started.UnixNano())))
	snapshots := cache.NewSnapshotCache(true, clusterHash{}, nil)
	mux := &cache.MuxCache{
		Classify: func(r *cache.Request) string {
			if r.GetTypeUrl() == resource.EndpointType {
				return "eds"
			}
			return "snapshot"
		},
		ClassifyDelta: func(r *cache.DeltaRequest) string {
			if r.GetTypeUrl() == resource.EndpointType {
				return "eds"
			}
			return "snapshot"
		},
		Caches: map[string]cache.Cache{"eds": linear, "snapshot": snapshots},
	}
	m := &mesh{
		registry:  NewRegistry(*prefix),
		linear:    linear,
		snapshots: snapshots,
		nodes:     map[string]bool{},
		versions:  map[types.ResponseType]int{},
		prefix:    fmt.Sprintf("%d", started.UnixNano()),
		listeners: map[string]cache.Resources{},
	}
	for _, n := range strings.Split(*nodeClusters, ",") {
		if n != "" {
			m.nodes[n] = true
		}
	}
	callbacks := server.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
			m.sawNode(r.GetNode())
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			m.sawNode(r.GetNode())
			return nil
		},
	}
	srv := server.NewServer(ctx, mux, callbacks)

	// The server options of go-control-plane's example server.
	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(1000000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 30 * time.Second, PermitWithoutStream: true}),
	)
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, srv)
	lis, err := net.Listen("tcp", *xds)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := grpcServer.Serve(lis); err != nil {
			log.Fatal(err)
		}
	}()
	fmt.Printf("listening %d\n", lis.Addr().(*net.TCPAddr).Port)

	client, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*etcdFlag, ","),
		DialTimeout: 10 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	listed, err := client.Get(ctx, *prefix, clientv3.WithPrefix())
	if err != nil {
		log.Fatal(err)
	}
	m.mu.Lock()
	dirty := newDirty()
	for _, kv := range listed.Kvs {
		m.registry.Apply(string(kv.Key), kv.Value, dirty)
	}
	if err := m.publish(dirty); err != nil {
		log.Fatal(err)
	}
	m.ready = true
	dirty.Clusters, dirty.Routes, dirty.Listeners = true, true, true
	dirty.Services = nil // already in the linear cache
	if err := m.publish(dirty); err != nil {
		log.Fatal(err)
	}
	m.mu.Unlock()
	revision := listed.Header.Revision
	now := time.Now()
	fmt.Printf("ready %.6f revision %d\n", float64(now.UnixNano())/1e9, revision)
	log.Printf("ready after %.3f s: %d keys at revision %d", now.Sub(started).Seconds(), len(listed.Kvs), revision)

	for wr := range client.Watch(ctx, *prefix, clientv3.WithPrefix(), clientv3.WithRev(revision+1)) {
		if err := wr.Err(); err != nil {
			log.Fatalf("watch: %v", err)
		}
		m.mu.Lock()
		dirty := newDirty()
		for _, ev := range wr.Events {
			var value []byte
			if ev.Type == clientv3.EventTypePut {
				value = ev.Kv.Value
			}
			m.registry.Apply(string(ev.Kv.Key), value, dirty)
			revision = max(revision, ev.Kv.ModRevision)
		}
		if dirty.any() {
			if err := m.publish(dirty); err != nil {
				log.Printf("publish: %v", err)
			}
		}
		m.mu.Unlock()
		fmt.Printf("applied %d\n", revision)
	}
	os.Exit(1)
}
