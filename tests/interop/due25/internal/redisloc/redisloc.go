// Package redisloc is a stand-in for due's Redis locator (locate/redis) for the v2.5.8 node:
// the Go module proxy here serves that module only at a commit built for due v2.4.1, whose
// compile-time interface check fails against v2.5.8's locate.Locator (v2.5 added LocateNodes).
//
// Written from the project's specification (shared/spec/cluster-protocol.md §6), not from due's
// source: the same keys, the same commands, the same unbind rule (delete only when the stored
// value is the caller's), the same events on the same channels, the same options under
// etc.locate.redis. Against due's own module nothing observable in Redis would differ.
package redisloc

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"

	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/locate"
	"github.com/dobyte/due/v2/log"
	"github.com/go-redis/redis/v8"
)

// Delete a string key only when it holds ARGV[1] (unbind gate), or a hash field ARGV[1] only
// when it holds ARGV[2] (unbind node); {"OK"} when deleted, {"NO"} otherwise.
var (
	unbindGate = redis.NewScript(`local v = redis.call('GET', KEYS[1])
if v == false or v == '' or v ~= ARGV[1] then return {'NO'} end
redis.call('DEL', KEYS[1])
return {'OK'}`)
	unbindNode = redis.NewScript(`local v = redis.call('HGET', KEYS[1], ARGV[1])
if v == false or v == '' or v ~= ARGV[2] then return {'NO'} end
redis.call('HDEL', KEYS[1], ARGV[1])
return {'OK'}`)
)

// Locator implements due v2.5.8's locate.Locator on Redis.
type Locator struct {
	client redis.UniversalClient
	prefix string
}

var _ locate.Locator = (*Locator)(nil)

// New connects with etc.locate.redis's addrs, db, username, password, maxRetries and prefix.
func New() *Locator {
	return &Locator{
		client: redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs:      etc.Get("etc.locate.redis.addrs", []string{"127.0.0.1:6379"}).Strings(),
			DB:         etc.Get("etc.locate.redis.db", 0).Int(),
			Username:   etc.Get("etc.locate.redis.username").String(),
			Password:   etc.Get("etc.locate.redis.password").String(),
			MaxRetries: etc.Get("etc.locate.redis.maxRetries", 3).Int(),
		}),
		prefix: etc.Get("etc.locate.redis.prefix", "due:locate").String(),
	}
}

func (l *Locator) Name() string { return "redis" }

func (l *Locator) gateKey(uid int64) string {
	return l.prefix + ":locate:user:" + strconv.FormatInt(uid, 10) + ":gate"
}

func (l *Locator) nodeKey(uid int64) string {
	return l.prefix + ":locate:user:" + strconv.FormatInt(uid, 10) + ":node"
}

func (l *Locator) channel(kind string) string {
	return l.prefix + ":locate:cluster:" + kind + ":event"
}

func (l *Locator) publish(ctx context.Context, ev *locate.Event) error {
	// Field order of the spec (§6.3): the struct's tag order.
	payload, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return l.client.Publish(ctx, l.channel(ev.InsKind), payload).Err()
}

func (l *Locator) BindGate(ctx context.Context, uid int64, gid string) error {
	if err := l.client.SetArgs(ctx, l.gateKey(uid), gid, redis.SetArgs{KeepTTL: true}).Err(); err != nil {
		return err
	}
	return l.publish(ctx, &locate.Event{UID: uid, Type: locate.BindGate, InsID: gid, InsKind: "gate"})
}

func (l *Locator) BindNode(ctx context.Context, uid int64, name, nid string) error {
	if err := l.client.HSet(ctx, l.nodeKey(uid), name, nid).Err(); err != nil {
		return err
	}
	return l.publish(ctx, &locate.Event{UID: uid, Type: locate.BindNode, InsID: nid, InsKind: "node", InsName: name})
}

func deleted(reply any) bool {
	r, ok := reply.([]any)
	return ok && len(r) == 1 && r[0] == "OK"
}

func (l *Locator) UnbindGate(ctx context.Context, uid int64, gid string) error {
	reply, err := unbindGate.Run(ctx, l.client, []string{l.gateKey(uid)}, gid).Result()
	if err != nil || !deleted(reply) {
		return err
	}
	return l.publish(ctx, &locate.Event{UID: uid, Type: locate.UnbindGate, InsID: gid, InsKind: "gate"})
}

func (l *Locator) UnbindNode(ctx context.Context, uid int64, name, nid string) error {
	reply, err := unbindNode.Run(ctx, l.client, []string{l.nodeKey(uid)}, name, nid).Result()
	if err != nil || !deleted(reply) {
		return err
	}
	return l.publish(ctx, &locate.Event{UID: uid, Type: locate.UnbindNode, InsID: nid, InsKind: "node", InsName: name})
}

// missingIsEmpty maps redis.Nil (no such key or field) to "".
func missingIsEmpty(v string, err error) (string, error) {
	if err == redis.Nil {
		return "", nil
	}
	return v, err
}

func (l *Locator) LocateGate(ctx context.Context, uid int64) (string, error) {
	return missingIsEmpty(l.client.Get(ctx, l.gateKey(uid)).Result())
}

func (l *Locator) LocateNode(ctx context.Context, uid int64, name string) (string, error) {
	return missingIsEmpty(l.client.HGet(ctx, l.nodeKey(uid), name).Result())
}

func (l *Locator) LocateNodes(ctx context.Context, uid int64) (map[string]string, error) {
	return l.client.HGetAll(ctx, l.nodeKey(uid)).Result()
}

// Watch subscribes to the event channels of kinds ("gate", "node"). The subscription outlives
// ctx (due's callers pass a context they cancel once Watch returns).
func (l *Locator) Watch(ctx context.Context, kinds ...string) (locate.Watcher, error) {
	channels := make([]string, 0, len(kinds))
	for _, k := range kinds {
		channels = append(channels, l.channel(k))
	}
	sub := l.client.Subscribe(context.Background(), channels...)
	if _, err := sub.Receive(ctx); err != nil { // the subscription's confirmation
		_ = sub.Close()
		return nil, err
	}
	return &watcher{sub: sub, ch: sub.Channel(), done: make(chan struct{})}, nil
}

type watcher struct {
	sub  *redis.PubSub
	ch   <-chan *redis.Message
	done chan struct{}
	once sync.Once
}

// Next blocks for the next event; after Stop it returns context.Canceled (due's loops end on it).
func (w *watcher) Next() ([]*locate.Event, error) {
	for {
		select {
		case <-w.done:
			return nil, context.Canceled
		case m, ok := <-w.ch:
			if !ok {
				return nil, context.Canceled
			}
			ev := &locate.Event{}
			if err := json.Unmarshal([]byte(m.Payload), ev); err != nil {
				log.Warnf("locate event %q skipped: %v", m.Payload, err)
				continue
			}
			return []*locate.Event{ev}, nil
		}
	}
}

func (w *watcher) Stop() error {
	w.once.Do(func() { close(w.done) })
	return w.sub.Close()
}
