// Package consulreg is a Consul implementation of due v2.4.1's registry.Registry interface.
//
// Why it exists: due's own module github.com/dobyte/due/registry/consul/v2 is not served by the
// Go module proxy this project can reach (every version of that module path is refused), so the
// interop peers cannot import it. This package is written from the project's specification
// (shared/spec/cluster-protocol.md §5.2 and §5.6) and produces the same records on the wire:
// service ID "<kind>-<id>", Name, Address/Port and TaggedAddresses from the endpoint, the Meta
// keys id/kind/alias/state/endpoint/weight/events/services/routes-N/_<metadata>, a TCP check and a
// TTL check "service:<kind>-<id>" kept passing every heartbeatCheckInterval/2, and discovery
// through passing-only blocking health queries that decode Meta only. It uses the same Consul
// client (github.com/hashicorp/consul/api v1.32.0) and the same etc keys as due's module, so the
// peers' configuration files are unchanged when due's module becomes available: swap the import.
package consulreg

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/registry"
	"github.com/hashicorp/consul/api"
)

const (
	name = "consul"

	// Consul limits a meta value to 512 characters: routes are packed into chunks of at most that.
	maxMetaValueLen = 512

	metaID       = "id"
	metaKind     = "kind"
	metaAlias    = "alias"
	metaState    = "state"
	metaEndpoint = "endpoint"
	metaWeight   = "weight"
	metaEvents   = "events"
	metaServices = "services"
	metaRoutes   = "routes"
)

// Options mirror due's etc.registry.consul.* keys (same names, same defaults).
type Options struct {
	Addr                           string
	HealthCheck                    bool
	HealthCheckInterval            int // seconds
	HealthCheckTimeout             int // seconds
	HeartbeatCheck                 bool
	HeartbeatCheckInterval         int // seconds: the TTL; it is refreshed every half
	DeregisterCriticalServiceAfter int // seconds
}

// OptionsFromEtc reads the options from the loaded due configuration.
func OptionsFromEtc() Options {
	return Options{
		Addr:                           etc.Get("etc.registry.consul.addr", "127.0.0.1:8500").String(),
		HealthCheck:                    etc.Get("etc.registry.consul.healthCheck", true).Bool(),
		HealthCheckInterval:            etc.Get("etc.registry.consul.healthCheckInterval", 10).Int(),
		HealthCheckTimeout:             etc.Get("etc.registry.consul.healthCheckTimeout", 5).Int(),
		HeartbeatCheck:                 etc.Get("etc.registry.consul.heartbeatCheck", true).Bool(),
		HeartbeatCheckInterval:         etc.Get("etc.registry.consul.heartbeatCheckInterval", 10).Int(),
		DeregisterCriticalServiceAfter: etc.Get("etc.registry.consul.deregisterCriticalServiceAfter", 30).Int(),
	}
}

// Registry registers instances with the local Consul agent and watches services.
type Registry struct {
	opts   Options
	client *api.Client
	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	heartbeats map[string]context.CancelFunc // service ID -> its TTL loop
}

var _ registry.Registry = (*Registry)(nil)

// New creates a registry talking to opts.Addr over plain HTTP.
func New(opts Options) (*Registry, error) {
	cfg := api.DefaultConfig()
	cfg.Address = opts.Addr
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	r := &Registry{opts: opts, client: client, heartbeats: make(map[string]context.CancelFunc)}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// Name is the component name due logs.
func (r *Registry) Name() string { return name }

func serviceID(ins *registry.ServiceInstance) string { return ins.Kind + "-" + ins.ID }

// endpointMap is the wire-fault suite's hook (tests/wire_faults.rs): INTEROP_ENDPOINT_MAP holds
// comma-separated "from=to" host:port pairs, and every endpoint whose host:port is a "from" is
// read as its "to" — the instance's own endpoint when it registers (so the Consul record points
// at a Toxiproxy listener in front of this peer's link server), and each watched instance's
// endpoint (so this peer dials another's link server through a proxy). Unset: no rewriting.
var endpointMap = parseEndpointMap(os.Getenv("INTEROP_ENDPOINT_MAP"))

func parseEndpointMap(text string) map[string]string {
	m := make(map[string]string)
	for _, pair := range strings.Split(text, ",") {
		if from, to, ok := strings.Cut(strings.TrimSpace(pair), "="); ok {
			m[from] = to
		}
	}
	return m
}

// mapEndpoint rewrites the host:port of a "scheme://host:port?…" endpoint per endpointMap.
func mapEndpoint(endpoint string) string {
	if len(endpointMap) == 0 {
		return endpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return endpoint
	}
	if to, ok := endpointMap[u.Host]; ok {
		u.Host = to
		return u.String()
	}
	return endpoint
}

// Register (re-)registers the instance and (re)starts its TTL heartbeat loop.
func (r *Registry) Register(ctx context.Context, ins *registry.ServiceInstance) error {
	if mapped := mapEndpoint(ins.Endpoint); mapped != ins.Endpoint {
		copied := *ins
		copied.Endpoint = mapped
		ins = &copied
	}
	u, err := url.Parse(ins.Endpoint)
	if err != nil {
		return fmt.Errorf("bad endpoint %q: %w", ins.Endpoint, err)
	}
	host, portText, err := net.SplitHostPort(u.Host)
	if err != nil {
		return fmt.Errorf("bad endpoint %q: %w", ins.Endpoint, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return fmt.Errorf("bad endpoint port %q: %w", ins.Endpoint, err)
	}

	id := serviceID(ins)
	reg := &api.AgentServiceRegistration{
		ID:              id,
		Name:            ins.Name,
		Port:            port,
		Address:         host,
		TaggedAddresses: map[string]api.ServiceAddress{u.Scheme: {Address: host, Port: port}},
		Meta:            encodeMeta(ins),
	}
	deregisterAfter := fmt.Sprintf("%ds", r.opts.DeregisterCriticalServiceAfter)
	if r.opts.HealthCheck {
		reg.Checks = append(reg.Checks, &api.AgentServiceCheck{
			TCP:                            net.JoinHostPort(host, portText),
			Interval:                       fmt.Sprintf("%ds", r.opts.HealthCheckInterval),
			Timeout:                        fmt.Sprintf("%ds", r.opts.HealthCheckTimeout),
			DeregisterCriticalServiceAfter: deregisterAfter,
		})
	}
	if r.opts.HeartbeatCheck {
		reg.Checks = append(reg.Checks, &api.AgentServiceCheck{
			CheckID:                        "service:" + id,
			TTL:                            fmt.Sprintf("%ds", r.opts.HeartbeatCheckInterval),
			DeregisterCriticalServiceAfter: deregisterAfter,
		})
	}

	if err = r.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return err
	}
	if r.opts.HeartbeatCheck {
		r.startHeartbeat(id)
	}
	return nil
}

// startHeartbeat keeps the TTL check passing: once right away, then every TTL/2.
func (r *Registry) startHeartbeat(id string) {
	ctx, cancel := context.WithCancel(r.ctx)
	r.mu.Lock()
	if old, ok := r.heartbeats[id]; ok {
		old()
	}
	r.heartbeats[id] = cancel
	r.mu.Unlock()

	interval := time.Duration(r.opts.HeartbeatCheckInterval) * time.Second / 2
	if interval <= 0 {
		interval = time.Second
	}
	checkID := "service:" + id
	go func() {
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			q := (&api.QueryOptions{}).WithContext(ctx)
			if err := r.client.Agent().UpdateTTLOpts(checkID, "passed", api.HealthPassing, q); err != nil && ctx.Err() == nil {
				log.Warnf("consul ttl update of %s failed: %v", checkID, err)
			}
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
}

// Deregister stops the TTL loop first, then removes the service from the agent.
func (r *Registry) Deregister(ctx context.Context, ins *registry.ServiceInstance) error {
	id := serviceID(ins)
	r.mu.Lock()
	if cancel, ok := r.heartbeats[id]; ok {
		cancel()
		delete(r.heartbeats, id)
	}
	r.mu.Unlock()
	q := (&api.QueryOptions{}).WithContext(ctx)
	return r.client.Agent().ServiceDeregisterOpts(id, q)
}

// Services returns the passing instances of a service (one health query).
func (r *Registry) Services(ctx context.Context, serviceName string) ([]*registry.ServiceInstance, error) {
	list, _, err := r.query(ctx, serviceName, 0)
	return list, err
}

func (r *Registry) query(ctx context.Context, serviceName string, index uint64) ([]*registry.ServiceInstance, uint64, error) {
	q := &api.QueryOptions{WaitIndex: index, WaitTime: 60 * time.Second}
	entries, meta, err := r.client.Health().Service(serviceName, "", true, q.WithContext(ctx))
	if err != nil {
		return nil, 0, err
	}
	list := make([]*registry.ServiceInstance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		list = append(list, decodeMeta(e.Service.Service, e.Service.Meta))
	}
	return list, meta.LastIndex, nil
}

// Watch returns a watcher whose first Next is the current list and later ones each change.
// The watcher outlives ctx (due passes a short start-up context and cancels it right away).
func (r *Registry) Watch(ctx context.Context, serviceName string) (registry.Watcher, error) {
	list, index, err := r.query(ctx, serviceName, 0)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(r.ctx)
	w := &watcher{ctx: wctx, cancel: cancel, ch: make(chan []*registry.ServiceInstance, 1)}
	w.ch <- list
	go w.loop(r, serviceName, index)
	return w, nil
}

// Close stops every heartbeat loop and watcher created by this registry.
func (r *Registry) Close() { r.cancel() }

type watcher struct {
	ctx    context.Context
	cancel context.CancelFunc
	ch     chan []*registry.ServiceInstance
}

func (w *watcher) loop(r *Registry, serviceName string, index uint64) {
	for w.ctx.Err() == nil {
		list, next, err := r.query(w.ctx, serviceName, index)
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			log.Warnf("consul watch of %s failed: %v", serviceName, err)
			select { // back off, as due does, instead of hammering a broken agent
			case <-w.ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		if next == index {
			continue // the blocking query timed out without a change
		}
		index = next
		select { // keep only the newest list when the consumer is slow
		case <-w.ch:
		default:
		}
		w.ch <- list
	}
}

// Next blocks until the next list; after Stop it returns an error (callers loop on it).
func (w *watcher) Next() ([]*registry.ServiceInstance, error) {
	select {
	case <-w.ctx.Done():
		return nil, w.ctx.Err()
	case list := <-w.ch:
		return list, nil
	}
}

func (w *watcher) Stop() error {
	w.cancel()
	return nil
}

// encodeMeta builds the Meta map of cluster-protocol.md §5.2.
func encodeMeta(ins *registry.ServiceInstance) map[string]string {
	meta := make(map[string]string, 8+len(ins.Metadata))
	meta[metaID] = ins.ID
	meta[metaKind] = ins.Kind
	meta[metaAlias] = ins.Alias
	meta[metaState] = ins.State
	meta[metaEndpoint] = ins.Endpoint
	if ins.Weight > 0 {
		meta[metaWeight] = strconv.Itoa(ins.Weight)
	}
	if len(ins.Events) > 0 {
		b, _ := json.Marshal(ins.Events)
		meta[metaEvents] = string(b)
	}
	if len(ins.Services) > 0 {
		b, _ := json.Marshal(ins.Services)
		meta[metaServices] = string(b)
	}
	chunk, n := "", 0
	for _, rt := range ins.Routes {
		flags := 0
		if rt.Internal {
			flags |= 1
		}
		if rt.Stateful {
			flags |= 2
		}
		if rt.Authorized {
			flags |= 4
		}
		item := fmt.Sprintf("%d-%d", rt.ID, flags)
		switch {
		case chunk == "":
			chunk = item
		case len(chunk)+1+len(item) <= maxMetaValueLen:
			chunk += "," + item
		default:
			meta[fmt.Sprintf("%s-%d", metaRoutes, n)] = chunk
			n++
			chunk = item
		}
	}
	if chunk != "" {
		meta[fmt.Sprintf("%s-%d", metaRoutes, n)] = chunk
	}
	for k, v := range ins.Metadata {
		meta["_"+k] = v
	}
	return meta
}

// decodeMeta is the inverse, with due's tolerance: bad numbers read as 0, bad JSON is ignored,
// route items that do not split into exactly two parts are dropped.
func decodeMeta(serviceName string, meta map[string]string) *registry.ServiceInstance {
	ins := &registry.ServiceInstance{Name: serviceName}
	type chunk struct {
		n    int
		text string
	}
	var chunks []chunk
	for k, v := range meta {
		switch {
		case k == metaID:
			ins.ID = v
		case k == metaKind:
			ins.Kind = v
		case k == metaAlias:
			ins.Alias = v
		case k == metaState:
			ins.State = v
		case k == metaEndpoint:
			ins.Endpoint = mapEndpoint(v)
		case k == metaWeight:
			ins.Weight, _ = strconv.Atoi(v)
		case k == metaEvents:
			_ = json.Unmarshal([]byte(v), &ins.Events)
		case k == metaServices:
			_ = json.Unmarshal([]byte(v), &ins.Services)
		case strings.HasPrefix(k, "_"):
			if ins.Metadata == nil {
				ins.Metadata = make(map[string]string)
			}
			ins.Metadata[k[1:]] = v
		default:
			parts := strings.Split(k, "-")
			if len(parts) == 2 && parts[0] == metaRoutes {
				n, _ := strconv.Atoi(parts[1])
				chunks = append(chunks, chunk{n, v})
			}
		}
	}
	sort.Slice(chunks, func(i, j int) bool { return chunks[i].n < chunks[j].n })
	for _, c := range chunks {
		for _, item := range strings.Split(c.text, ",") {
			parts := strings.Split(item, "-")
			if len(parts) != 2 {
				continue
			}
			id, _ := strconv.Atoi(parts[0])
			flags, _ := strconv.Atoi(parts[1])
			ins.Routes = append(ins.Routes, registry.Route{
				ID:         int32(id),
				Internal:   flags&1 != 0,
				Stateful:   flags&2 != 0,
				Authorized: flags&4 != 0,
			})
		}
	}
	return ins
}
