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
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/dobyte/due/locate/redis/v2"
	"github.com/dobyte/due/v2"
	"github.com/dobyte/due/v2/cluster"
	"github.com/dobyte/due/v2/cluster/node"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/flag"
	"github.com/dobyte/due/v2/log"

	"gatehouse/interop/internal/ctl"
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
		payload := ctl.MessageLine(ctx)
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
			payload := ctl.MessageLine(ctx)
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

func controlMux(proxy *node.Proxy) *http.ServeMux {
	mux := ctl.NewMux()
	handle := mux.Handle

	handle("/push", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Push(ctx, &cluster.PushArgs{GID: q.Str("gid"), Kind: q.Kind(), Target: q.Int64("target"), Message: q.Message()})
	})
	handle("/multicast", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Multicast(ctx, &cluster.MulticastArgs{GID: q.Str("gid"), Kind: q.Kind(), Targets: q.Int64s("targets"), Message: q.Message()})
	})
	handle("/broadcast", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Broadcast(ctx, &cluster.BroadcastArgs{Kind: q.Kind(), Message: q.Message()})
	})
	handle("/publish", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Publish(ctx, &cluster.PublishArgs{Channel: q.Str("channel"), Message: q.Message()})
	})
	handle("/subscribe", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Subscribe(ctx, &cluster.SubscribeArgs{GID: q.Str("gid"), Kind: q.Kind(), Targets: q.Int64s("targets"), Channel: q.Str("channel")})
	})
	handle("/unsubscribe", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Unsubscribe(ctx, &cluster.UnsubscribeArgs{GID: q.Str("gid"), Kind: q.Kind(), Targets: q.Int64s("targets"), Channel: q.Str("channel")})
	})
	handle("/getip", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.GetIP(ctx, &cluster.GetIPArgs{GID: q.Str("gid"), Kind: q.Kind(), Target: q.Int64("target")})
	})
	handle("/isonline", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.IsOnline(ctx, &cluster.IsOnlineArgs{GID: q.Str("gid"), Kind: q.Kind(), Target: q.Int64("target")})
	})
	handle("/stat", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.Stat(ctx, q.Kind())
	})
	handle("/disconnect", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Disconnect(ctx, &cluster.DisconnectArgs{GID: q.Str("gid"), Kind: q.Kind(), Target: q.Int64("target"), Force: q.Bool("force")})
	})
	handle("/bindgate", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.BindGate(ctx, q.Str("gid"), q.Int64("cid"), q.Int64("uid"))
	})
	handle("/unbindgate", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.UnbindGate(ctx, q.Int64("uid"))
	})
	handle("/bindnode", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.BindNode(ctx, q.Int64("uid"))
	})
	handle("/unbindnode", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.UnbindNode(ctx, q.Int64("uid"))
	})
	handle("/locategate", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.LocateGate(ctx, q.Int64("uid"))
	})
	handle("/locatenode", func(ctx context.Context, q *ctl.Query) (any, error) {
		name := q.Str("name")
		if name == "" {
			name = proxy.GetName()
		}
		return proxy.LocateNode(ctx, q.Int64("uid"), name)
	})
	handle("/hasgate", func(_ context.Context, q *ctl.Query) (any, error) {
		return proxy.HasGate(q.Str("gid")), nil
	})
	handle("/fetchgatelist", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.FetchGateList(ctx, q.States()...)
	})
	handle("/fetchnodelist", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.FetchNodeList(ctx, q.States()...)
	})
	handle("/state", func(_ context.Context, q *ctl.Query) (any, error) {
		if set := q.Str("set"); set != "" {
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
	handle("/quit", func(_ context.Context, _ *ctl.Query) (any, error) {
		// The container waits for SIGTERM; send it to ourselves for an orderly due shutdown.
		return nil, syscall.Kill(os.Getpid(), syscall.SIGTERM)
	})
	return mux.ServeMux
}
