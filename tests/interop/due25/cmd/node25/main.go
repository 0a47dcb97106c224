// Command node25 is a real due v2.5.8 node (github.com/dobyte/due/v2 v2.5.8 from the Go module
// proxy) for the interop suite's v2.5 test (tests/interop_due25.rs): the peer that proves a
// gate speaks the v2.5 link features — acknowledged push/multicast/broadcast/publish returning
// the delivered count, the disconnect-after-push bit, disconnect sent as a call.
//
// Same etc.toml, output lines and control envelope as the v2.4.1 node (../../cmd/node; shared
// code in ../../internal/ctl), with only what the v2.5 test needs: routes 1 (echo) and 5 (bind
// gate: payload = decimal uid); events connect/reconnect/disconnect; control endpoints /push
// /multicast /broadcast /publish (ack=true for an acknowledged send, disconnect=true for the
// 0x40 bit), /subscribe /disconnect /bindgate /isonline /stat /hasgate /quit. /multicast,
// /broadcast and /publish answer the delivered count the node got back.
//
// Registry: the Consul stand-in of the interop module (internal/consulreg: due v2.4.1 and v2.5.8
// share the registry interface, see there why it is a stand-in). Locator: internal/redisloc, a
// spec-based stand-in for due's locate/redis (see there why).
package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/dobyte/due/v2"
	"github.com/dobyte/due/v2/cluster"
	"github.com/dobyte/due/v2/cluster/node"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/flag"
	"github.com/dobyte/due/v2/log"

	"gatehouse/interop/internal/consulreg"
	"gatehouse/interop/internal/ctl"
	"gatehouse/interop/internal/peer"

	"gatehouse/interop/due25/internal/redisloc"
)

const (
	routeEcho     = 1
	routeBindGate = 5
)

func main() {
	reg, err := consulreg.New(consulreg.OptionsFromEtc())
	if err != nil {
		log.Fatalf("consul registry: %v", err)
	}
	defer reg.Close()

	n := node.NewNode(
		node.WithLocator(redisloc.New()),
		node.WithRegistry(reg),
		node.WithCodec(peer.RawCodec{}),
	)
	proxy := n.Proxy()

	proxy.Router().AddRouteHandler(routeEcho, func(ctx node.Context) {
		if err := ctx.Response(ctl.MessageLine(ctx)); err != nil {
			log.Errorf("response failed: %v", err)
		}
	})
	proxy.Router().AddRouteHandler(routeBindGate, func(ctx node.Context) {
		s := strings.TrimSpace(string(ctl.MessageLine(ctx)))
		reply := []byte("ok")
		if uid, err := strconv.ParseInt(s, 10, 64); err != nil {
			reply = []byte("error: bad uid " + strconv.Quote(s))
		} else if err := ctx.BindGate(uid); err != nil {
			reply = []byte("error: " + err.Error())
		}
		if err := ctx.Response(reply); err != nil {
			log.Errorf("response failed: %v", err)
		}
	})
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
		peer.Emit("ready", map[string]any{"kind": "node", "version": "v2.5.8", "nid": p.GetID(), "name": p.GetName(), "ctl": ln.Addr().String()})
	})

	container := due.NewContainer()
	container.Add(n)
	container.Serve()
}

func controlMux(proxy *node.Proxy) *http.ServeMux {
	mux := ctl.NewMux()
	mux.Handle("/push", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Push(ctx, &cluster.PushArgs{GID: q.Str("gid"), Kind: q.Kind(), Target: q.Int64("target"), Message: q.Message(), Ack: q.Bool("ack"), Disconnect: q.Bool("disconnect")})
	})
	mux.Handle("/multicast", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.Multicast(ctx, &cluster.MulticastArgs{GID: q.Str("gid"), Kind: q.Kind(), Targets: q.Int64s("targets"), Message: q.Message(), Ack: q.Bool("ack"), Disconnect: q.Bool("disconnect")})
	})
	mux.Handle("/broadcast", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.Broadcast(ctx, &cluster.BroadcastArgs{Kind: q.Kind(), Message: q.Message(), Ack: q.Bool("ack"), Disconnect: q.Bool("disconnect")})
	})
	mux.Handle("/publish", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.Publish(ctx, &cluster.PublishArgs{Channel: q.Str("channel"), Message: q.Message(), Ack: q.Bool("ack"), Disconnect: q.Bool("disconnect")})
	})
	mux.Handle("/subscribe", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Subscribe(ctx, &cluster.SubscribeArgs{GID: q.Str("gid"), Kind: q.Kind(), Targets: q.Int64s("targets"), Channel: q.Str("channel")})
	})
	mux.Handle("/disconnect", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.Disconnect(ctx, &cluster.DisconnectArgs{GID: q.Str("gid"), Kind: q.Kind(), Target: q.Int64("target"), Force: q.Bool("force")})
	})
	mux.Handle("/bindgate", func(ctx context.Context, q *ctl.Query) (any, error) {
		return nil, proxy.BindGate(ctx, q.Str("gid"), q.Int64("cid"), q.Int64("uid"))
	})
	mux.Handle("/isonline", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.IsOnline(ctx, &cluster.IsOnlineArgs{GID: q.Str("gid"), Kind: q.Kind(), Target: q.Int64("target")})
	})
	mux.Handle("/stat", func(ctx context.Context, q *ctl.Query) (any, error) {
		return proxy.Stat(ctx, q.Kind())
	})
	mux.Handle("/hasgate", func(_ context.Context, q *ctl.Query) (any, error) {
		return proxy.HasGate(q.Str("gid")), nil
	})
	mux.Handle("/quit", func(_ context.Context, _ *ctl.Query) (any, error) {
		return nil, syscall.Kill(os.Getpid(), syscall.SIGTERM)
	})
	return mux.ServeMux
}
