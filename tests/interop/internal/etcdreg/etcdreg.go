// Package etcdreg is an etcd implementation of due v2.4.1's registry.Registry interface.
//
// STAND-IN, clearly marked: due's own module github.com/dobyte/due/registry/etcd/v2 is not
// served by the Go module proxy this project can reach (every version is refused), so the
// interop peers cannot import it. This package is written from the project's specification
// (shared/spec/etcd-registry.md, which was verified by running due's module against etcd 3.4)
// and behaves as that module does, quirks included: the same etcd client
// (go.etcd.io/etcd/client/v3 v3.5.21), the same etc keys and defaults (etc.registry.etcd.*), the
// key /<namespace>/<name>/<id>, the value encoded with due's encoding/json (sonic), a new lease
// of TTL ⌊retryInterval⌋+1 per Register, KeepAlive, at most retryTimes re-puts (sleeping
// retryInterval after each failure) when the keep-alive channel closes and then giving up for
// good, Deregister = delete the key and close the lease client (no revoke), discovery by a prefix
// GET + prefix watch of /<namespace>/<name> WITHOUT a trailing slash, instances keyed by their
// JSON id, deletes recognised only for 4-part keys, the whole list re-published per response.
// Swap the import for due's module when it becomes available; the configuration is unchanged.
package etcdreg

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/dobyte/due/v2/encoding/json"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const name = "etcd"

// Options mirror due's etc.registry.etcd.* keys (same names, same defaults).
type Options struct {
	Addrs         []string
	DialTimeout   time.Duration
	Namespace     string
	Timeout       time.Duration
	RetryTimes    int
	RetryInterval time.Duration
}

// OptionsFromEtc reads the options from the loaded due configuration.
func OptionsFromEtc() Options {
	return Options{
		Addrs:         etc.Get("etc.registry.etcd.addrs", []string{"127.0.0.1:2379"}).Strings(),
		DialTimeout:   etc.Get("etc.registry.etcd.dialTimeout", "5s").Duration(),
		Namespace:     etc.Get("etc.registry.etcd.namespace", "services").String(),
		Timeout:       etc.Get("etc.registry.etcd.timeout", "3s").Duration(),
		RetryTimes:    etc.Get("etc.registry.etcd.retryTimes", 3).Int(),
		RetryInterval: etc.Get("etc.registry.etcd.retryInterval", "10s").Duration(),
	}
}

// Registry registers instances in etcd and watches services.
type Registry struct {
	opts   Options
	client *clientv3.Client
	err    error
	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	registrars map[string]*registrar // "<kind>-<id>" -> its registrar
	watchers   map[string]*watcherMgr
}

var _ registry.Registry = (*Registry)(nil)

// New creates the registry and its etcd client (dialled lazily, as client v3.5 does).
func New(opts Options) *Registry {
	r := &Registry{opts: opts, registrars: map[string]*registrar{}, watchers: map[string]*watcherMgr{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.client, r.err = clientv3.New(clientv3.Config{Endpoints: opts.Addrs, DialTimeout: opts.DialTimeout})
	return r
}

// Name is the component name due logs.
func (r *Registry) Name() string { return name }

// Close stops every keep-alive and watcher and closes the client.
func (r *Registry) Close() {
	r.cancel()
	if r.client != nil {
		_ = r.client.Close()
	}
}

func (r *Registry) key(ins *registry.ServiceInstance) string {
	return "/" + r.opts.Namespace + "/" + ins.Name + "/" + ins.ID
}

func (r *Registry) ttl() int64 { return int64(r.opts.RetryInterval/time.Second) + 1 }

// Register grants a new lease, puts the key on it and keeps that lease alive (the previous
// lease of the instance, if any, is no longer kept alive and expires without keys).
func (r *Registry) Register(ctx context.Context, ins *registry.ServiceInstance) error {
	if r.err != nil {
		return r.err
	}
	id := ins.Kind + "-" + ins.ID
	r.mu.Lock()
	rg, ok := r.registrars[id]
	if !ok {
		rg = &registrar{reg: r, lease: clientv3.NewLease(r.client), kv: clientv3.NewKV(r.client)}
		r.registrars[id] = rg
	}
	r.mu.Unlock()
	return rg.register(ctx, ins)
}

// Deregister stops the keep-alive, deletes the key and closes the lease client (no revoke).
func (r *Registry) Deregister(ctx context.Context, ins *registry.ServiceInstance) error {
	if r.err != nil {
		return r.err
	}
	id := ins.Kind + "-" + ins.ID
	r.mu.Lock()
	rg, ok := r.registrars[id]
	delete(r.registrars, id)
	r.mu.Unlock()
	if !ok {
		_, err := r.client.Delete(ctx, r.key(ins))
		return err
	}
	return rg.deregister(ctx, r.key(ins))
}

type registrar struct {
	reg   *Registry
	lease clientv3.Lease
	kv    clientv3.KV

	mu     sync.Mutex
	cancel context.CancelFunc
}

func (rg *registrar) put(ctx context.Context, key, value string) (clientv3.LeaseID, error) {
	grant, err := rg.lease.Grant(ctx, rg.reg.ttl())
	if err != nil {
		return 0, err
	}
	if _, err = rg.kv.Put(ctx, key, value, clientv3.WithLease(grant.ID)); err != nil {
		return 0, err
	}
	return grant.ID, nil
}

func (rg *registrar) register(ctx context.Context, ins *registry.ServiceInstance) error {
	value, err := json.Marshal(ins)
	if err != nil {
		return err
	}
	key := rg.reg.key(ins)
	id, err := rg.put(ctx, key, string(value))
	if err != nil {
		return err
	}
	rg.mu.Lock()
	if rg.cancel != nil {
		rg.cancel()
	}
	kctx, cancel := context.WithCancel(rg.reg.ctx)
	rg.cancel = cancel
	rg.mu.Unlock()
	go rg.keepAlive(kctx, id, key, string(value))
	return nil
}

// keepAlive drains the keep-alive channel; when it closes (lease gone, or no answer within the
// TTL), it re-puts at most retryTimes times, sleeping retryInterval after each failure, and then
// gives up for good, as due v2.4.1 does (etcd-registry.md §6.1).
func (rg *registrar) keepAlive(ctx context.Context, id clientv3.LeaseID, key, value string) {
	for {
		ch, err := rg.lease.KeepAlive(ctx, id)
		if err == nil {
			for range ch {
			}
		}
		if ctx.Err() != nil {
			return
		}
		log.Warnf("etcd keep-alive of %s (lease %x) ended: %v", key, id, err)
		ok := false
		for i := 0; i < rg.reg.opts.RetryTimes && !ok; i++ {
			tctx, cancel := context.WithTimeout(ctx, rg.reg.opts.Timeout)
			nid, perr := rg.put(tctx, key, value)
			cancel()
			if perr == nil {
				id, ok = nid, true
				break
			}
			log.Warnf("etcd re-put of %s failed (attempt %d): %v", key, i+1, perr)
			select {
			case <-ctx.Done():
				return
			case <-time.After(rg.reg.opts.RetryInterval):
			}
		}
		if !ok {
			log.Errorf("etcd: giving up on %s after %d attempts", key, rg.reg.opts.RetryTimes)
			return
		}
	}
}

func (rg *registrar) deregister(ctx context.Context, key string) error {
	rg.mu.Lock()
	if rg.cancel != nil {
		rg.cancel()
	}
	rg.mu.Unlock()
	_, err := rg.kv.Delete(ctx, key)
	_ = rg.lease.Close()
	return err
}

func (r *Registry) prefix(serviceName string) string {
	return "/" + r.opts.Namespace + "/" + serviceName
}

// Services lists a service's instances (one prefix GET; any undecodable value fails the call).
func (r *Registry) Services(ctx context.Context, serviceName string) ([]*registry.ServiceInstance, error) {
	if r.err != nil {
		return nil, r.err
	}
	r.mu.Lock()
	m, ok := r.watchers[serviceName]
	r.mu.Unlock()
	if ok {
		return m.list(), nil
	}
	_, list, err := r.get(ctx, serviceName)
	return list, err
}

func (r *Registry) get(ctx context.Context, serviceName string) (int64, []*registry.ServiceInstance, error) {
	res, err := r.client.Get(ctx, r.prefix(serviceName), clientv3.WithPrefix())
	if err != nil {
		return 0, nil, err
	}
	list := make([]*registry.ServiceInstance, 0, len(res.Kvs))
	for _, kv := range res.Kvs {
		ins := &registry.ServiceInstance{}
		if err := json.Unmarshal(kv.Value, ins); err != nil {
			return 0, nil, err
		}
		list = append(list, ins)
	}
	return res.Header.Revision, list, nil
}

// Watch returns a watcher of the service; one watch per service name is shared by all callers.
// The watch outlives ctx (due passes a short start-up context).
func (r *Registry) Watch(ctx context.Context, serviceName string) (registry.Watcher, error) {
	if r.err != nil {
		return nil, r.err
	}
	r.mu.Lock()
	m, ok := r.watchers[serviceName]
	r.mu.Unlock()
	if !ok {
		_, list, err := r.get(ctx, serviceName)
		if err != nil {
			return nil, err
		}
		m = &watcherMgr{instances: map[string]*registry.ServiceInstance{}}
		for _, ins := range list {
			m.instances[ins.ID] = ins
		}
		r.mu.Lock()
		if existing, ok := r.watchers[serviceName]; ok {
			m = existing
		} else {
			r.watchers[serviceName] = m
			// No start revision: changes between the GET and the watch start can be missed,
			// as in due.
			go m.run(r.ctx, r.client.Watch(r.ctx, r.prefix(serviceName), clientv3.WithPrefix()))
		}
		r.mu.Unlock()
	}
	return m.subscribe(), nil
}

type watcherMgr struct {
	mu        sync.Mutex
	instances map[string]*registry.ServiceInstance
	subs      []*watcher
}

func (m *watcherMgr) list() []*registry.ServiceInstance {
	m.mu.Lock()
	defer m.mu.Unlock()
	list := make([]*registry.ServiceInstance, 0, len(m.instances))
	for _, ins := range m.instances {
		list = append(list, ins)
	}
	return list
}

func (m *watcherMgr) subscribe() *watcher {
	w := &watcher{ch: make(chan []*registry.ServiceInstance, 16), done: make(chan struct{})}
	w.ch <- m.list()
	m.mu.Lock()
	m.subs = append(m.subs, w)
	m.mu.Unlock()
	return w
}

func (m *watcherMgr) run(ctx context.Context, ch clientv3.WatchChan) {
	for res := range ch {
		if res.Err() != nil {
			// A compacted or cancelled watch ends for good (due's quirk, etcd-registry.md §6.2).
			log.Warnf("etcd watch ended: %v", res.Err())
			return
		}
		m.mu.Lock()
		for _, ev := range res.Events {
			switch ev.Type {
			case clientv3.EventTypePut:
				ins := &registry.ServiceInstance{}
				if err := json.Unmarshal(ev.Kv.Value, ins); err == nil {
					m.instances[ins.ID] = ins
				}
			case clientv3.EventTypeDelete:
				parts := strings.Split(string(ev.Kv.Key), "/")
				if len(parts) == 4 {
					delete(m.instances, parts[3])
				}
			}
		}
		subs := append([]*watcher(nil), m.subs...)
		m.mu.Unlock()
		list := m.list()
		for _, w := range subs {
			select {
			case w.ch <- list:
			case <-w.done:
			case <-ctx.Done():
				return
			}
		}
	}
}

type watcher struct {
	ch   chan []*registry.ServiceInstance
	once sync.Once
	done chan struct{}
}

// Next returns the current list first, then blocks for the next published one.
func (w *watcher) Next() ([]*registry.ServiceInstance, error) {
	select {
	case <-w.done:
		return nil, errors.New("watcher stopped")
	case list := <-w.ch:
		return list, nil
	}
}

func (w *watcher) Stop() error {
	w.once.Do(func() { close(w.done) })
	return nil
}
