// Command node is a real due v2.4.1 node (cluster/node) for the interop suite: Redis locator
// (due's locate/redis), Consul or etcd registry (internal/regsel, which picks internal/consulreg
// or internal/etcdreg: see there why), configuration from
// etc.toml (--etc=PATH or DUE_ETC, due's own lookup).
//
// Routes (payloads are raw bytes; every handled message is printed as a "message" line):
//
//	1  stateless echo           2  stateful echo          3  authorized echo
//	4  internal echo (a gate must never deliver it)
//	5  bind gate: payload = decimal uid; ctx.BindGate(uid); replies "ok" or "error: ..."
//	6  bind node: ctx.BindNode() for the bound uid (or payload uid); replies "ok"/"error: ..."
//	7  unbind node: ctx.UnbindNode() likewise
//	8  unbind gate: ctx.UnbindGate() likewise
//
// Events connect/reconnect/disconnect print one line each:
// {"event":"connect","gid":"...","cid":1,"uid":0}.
//
// Control: an HTTP server on --ctl (default 127.0.0.1:0; the bound address is printed in the
// "ready" line) lets a test make the node call proxy APIs. Every endpoint answers JSON
// {"ok":true,"result":...} or {"ok":false,"error":"..."} (HTTP 500). Query parameters:
// kind=conn|user, gid, target, targets=1,2,3, uid, cid, channel, route, seq, force=true; the
// request body is the message payload. Endpoints: /push /multicast /broadcast /publish
// /subscribe /unsubscribe /getip /isonline /stat /disconnect /bindgate /unbindgate /bindnode
// /unbindnode /locategate /locatenode /fetchgatelist /fetchnodelist /hasgate /state (set=work|busy|hang)
// /quit (graceful shutdown: same as SIGTERM).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dobyte/due/locate/redis/v2"
	"github.com/dobyte/due/v2"
	"github.com/dobyte/due/v2/cluster"
	"github.com/dobyte/due/v2/cluster/node"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/flag"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/session"

	"gatehouse/interop/internal/peer"
	"gatehouse/interop/internal/regsel"
)

const (
	routeEcho       = 1
	routeStateful   = 2
	routeAuthorized = 3
	routeInternal   = 4
	routeBindGate   = 5
	routeBindNode   = 6
	routeUnbindNode = 7
	routeUnbindGate = 8
)

func main() {
	reg, closeRegistry := regsel.New()
	defer closeRegistry()

	n := node.NewNode(
		node.WithLocator(redis.NewLocator()),
		node.WithRegistry(reg),
		// Raw bytes in and out, whatever etc.cluster.node.codec says: the tests compare bytes.
		node.WithCodec(peer.RawCodec{}),
	)
	proxy := n.Proxy()

	echo := func(ctx node.Context) {
		payload := messageLine(ctx)
		if err := ctx.Response(payload); err != nil {
			log.Errorf("response failed: %v", err)
		}
	}
	proxy.Router().AddRouteHandler(routeEcho, echo)
	proxy.Router().AddRouteHandler(routeStateful, echo, node.StatefulRoute)
	proxy.Router().AddRouteHandler(routeAuthorized, echo, node.AuthorizedRoute)
	proxy.Router().AddRouteHandler(routeInternal, echo, node.InternalRoute)

	// Routes that act on the user; the uid comes from the payload, else from the bound session.
	withUID := func(call func(ctx node.Context, uid []int64) error) node.RouteHandler {
		return func(ctx node.Context) {
			payload := messageLine(ctx)
			var uid []int64
			if s := strings.TrimSpace(string(payload)); s != "" {
				v, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					_ = ctx.Response([]byte("error: bad uid " + strconv.Quote(s)))
					return
				}
				uid = []int64{v}
			}
			reply := []byte("ok")
			if err := call(ctx, uid); err != nil {
				reply = []byte("error: " + err.Error())
			}
			if err := ctx.Response(reply); err != nil {
				log.Errorf("response failed: %v", err)
			}
		}
	}
	proxy.Router().AddRouteHandler(routeBindGate, withUID(func(ctx node.Context, uid []int64) error { return ctx.BindGate(uid...) }))
	proxy.Router().AddRouteHandler(routeBindNode, withUID(func(ctx node.Context, uid []int64) error { return ctx.BindNode(uid...) }))
	proxy.Router().AddRouteHandler(routeUnbindNode, withUID(func(ctx node.Context, uid []int64) error { return ctx.UnbindNode(uid...) }))
	proxy.Router().AddRouteHandler(routeUnbindGate, withUID(func(ctx node.Context, uid []int64) error { return ctx.UnbindGate(uid...) }))

	for _, evt := range []cluster.Event{cluster.Connect, cluster.Reconnect, cluster.Disconnect} {
		proxy.Trigger().AddEventHandler(evt, func(ctx node.Context) {
			peer.Emit(ctx.Event().String(), map[string]any{"gid": ctx.GID(), "cid": ctx.CID(), "uid": ctx.UID()})
		})
	}

	ctlAddr := flag.String("ctl", etc.Get("etc.interop.ctl", "127.0.0.1:0").String())
	ln, err := net.Listen("tcp", ctlAddr)
	if err != nil {
		log.Fatalf("control listener on %s: %v", ctlAddr, err)
	}
	go func() { _ = http.Serve(ln, controlMux(proxy)) }()

	proxy.AddHookListener(cluster.Start, func(p *node.Proxy) {
		peer.Emit("ready", map[string]any{"kind": "node", "nid": p.GetID(), "name": p.GetName(), "ctl": ln.Addr().String()})
	})

	container := due.NewContainer()
	container.Add(n)
	// Serve blocks until SIGTERM/SIGINT and the shutdown; due closes its console logger (stdout)
	// on the way out, so nothing can be printed after it.
	container.Serve()
}

// messageLine prints the message a route handler got and returns its raw payload.
func messageLine(ctx node.Context) []byte {
	var payload []byte
	if err := ctx.Parse(&payload); err != nil {
		log.Errorf("parse failed: %v", err)
	}
	peer.Emit("message", map[string]any{
		"route": ctx.Route(), "seq": ctx.Seq(), "gid": ctx.GID(), "cid": ctx.CID(), "uid": ctx.UID(),
		"payload": string(payload),
	})
	return payload
}

type query struct {
	r    *http.Request
	body []byte
	err  error
}

func (q *query) str(key string) string { return q.r.URL.Query().Get(key) }

func (q *query) int64(key string) int64 {
	s := q.str(key)
	if s == "" {
		return 0
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil && q.err == nil {
		q.err = errors.New("bad " + key + ": " + s)
	}
	return v
}

func (q *query) int64s(key string) []int64 {
	var out []int64
	for _, s := range strings.Split(q.str(key), ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil && q.err == nil {
			q.err = errors.New("bad " + key + ": " + s)
		}
		out = append(out, v)
	}
	return out
}

func (q *query) kind() session.Kind {
	switch q.str("kind") {
	case "user":
		return session.User
	case "", "conn":
		return session.Conn
	default:
		if q.err == nil {
			q.err = errors.New("kind must be conn or user")
		}
		return session.Conn
	}
}

func (q *query) message() *cluster.Message {
	return &cluster.Message{Route: int32(q.int64("route")), Seq: int32(q.int64("seq")), Data: q.body}
}

func controlMux(proxy *node.Proxy) *http.ServeMux {
	mux := http.NewServeMux()
	handle := func(path string, fn func(ctx context.Context, q *query) (any, error)) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			q := &query{r: r, body: body, err: err}
			ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
			defer cancel()
			var result any
			if q.err == nil {
				result, err = fn(ctx, q)
				if q.err != nil { // a parameter error found while building the call
					err = q.err
				}
			} else {
				err = q.err
			}
			w.Header().Set("Content-Type", "application/json")
			if err != nil {
				w.WriteHeader(http.StatusInternalServerError)
				_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": err.Error()})
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "result": result})
		})
	}

	handle("/push", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.Push(ctx, &cluster.PushArgs{GID: q.str("gid"), Kind: q.kind(), Target: q.int64("target"), Message: q.message()})
	})
	handle("/multicast", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.Multicast(ctx, &cluster.MulticastArgs{GID: q.str("gid"), Kind: q.kind(), Targets: q.int64s("targets"), Message: q.message()})
	})
	handle("/broadcast", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.Broadcast(ctx, &cluster.BroadcastArgs{Kind: q.kind(), Message: q.message()})
	})
	handle("/publish", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.Publish(ctx, &cluster.PublishArgs{Channel: q.str("channel"), Message: q.message()})
	})
	handle("/subscribe", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.Subscribe(ctx, &cluster.SubscribeArgs{GID: q.str("gid"), Kind: q.kind(), Targets: q.int64s("targets"), Channel: q.str("channel")})
	})
	handle("/unsubscribe", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.Unsubscribe(ctx, &cluster.UnsubscribeArgs{GID: q.str("gid"), Kind: q.kind(), Targets: q.int64s("targets"), Channel: q.str("channel")})
	})
	handle("/getip", func(ctx context.Context, q *query) (any, error) {
		return proxy.GetIP(ctx, &cluster.GetIPArgs{GID: q.str("gid"), Kind: q.kind(), Target: q.int64("target")})
	})
	handle("/isonline", func(ctx context.Context, q *query) (any, error) {
		return proxy.IsOnline(ctx, &cluster.IsOnlineArgs{GID: q.str("gid"), Kind: q.kind(), Target: q.int64("target")})
	})
	handle("/stat", func(ctx context.Context, q *query) (any, error) {
		return proxy.Stat(ctx, q.kind())
	})
	handle("/disconnect", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.Disconnect(ctx, &cluster.DisconnectArgs{GID: q.str("gid"), Kind: q.kind(), Target: q.int64("target"), Force: q.str("force") == "true"})
	})
	handle("/bindgate", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.BindGate(ctx, q.str("gid"), q.int64("cid"), q.int64("uid"))
	})
	handle("/unbindgate", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.UnbindGate(ctx, q.int64("uid"))
	})
	handle("/bindnode", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.BindNode(ctx, q.int64("uid"))
	})
	handle("/unbindnode", func(ctx context.Context, q *query) (any, error) {
		return nil, proxy.UnbindNode(ctx, q.int64("uid"))
	})
	handle("/locategate", func(ctx context.Context, q *query) (any, error) {
		return proxy.LocateGate(ctx, q.int64("uid"))
	})
	handle("/locatenode", func(ctx context.Context, q *query) (any, error) {
		name := q.str("name")
		if name == "" {
			name = proxy.GetName()
		}
		return proxy.LocateNode(ctx, q.int64("uid"), name)
	})
	handle("/hasgate", func(_ context.Context, q *query) (any, error) {
		return proxy.HasGate(q.str("gid")), nil
	})
	handle("/fetchgatelist", func(ctx context.Context, q *query) (any, error) {
		return proxy.FetchGateList(ctx, states(q)...)
	})
	handle("/fetchnodelist", func(ctx context.Context, q *query) (any, error) {
		return proxy.FetchNodeList(ctx, states(q)...)
	})
	handle("/state", func(_ context.Context, q *query) (any, error) {
		if set := q.str("set"); set != "" {
			st, ok := map[string]cluster.State{"work": cluster.Work, "busy": cluster.Busy, "hang": cluster.Hang}[set]
			if !ok {
				return nil, errors.New("set must be work, busy or hang")
			}
			if err := proxy.SetState(st); err != nil {
				return nil, err
			}
		}
		return proxy.GetState().String(), nil
	})
	handle("/quit", func(_ context.Context, _ *query) (any, error) {
		// The container waits for SIGTERM; send it to ourselves for an orderly due shutdown.
		return nil, syscall.Kill(os.Getpid(), syscall.SIGTERM)
	})
	return mux
}

// states parses states=work,busy for the Fetch*List filters.
func states(q *query) []cluster.State {
	var out []cluster.State
	for _, s := range strings.Split(q.str("states"), ",") {
		switch strings.TrimSpace(s) {
		case "work":
			out = append(out, cluster.Work)
		case "busy":
			out = append(out, cluster.Busy)
		case "hang":
			out = append(out, cluster.Hang)
		case "shut":
			out = append(out, cluster.Shut)
		}
	}
	return out
}
