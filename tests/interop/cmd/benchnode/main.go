// Command benchnode is the due v2.4.1 node the benchmark (bench/) runs behind both gates: due's
// cluster/node with the Redis locator and the Consul registry, quiet on the message path.
//
// Routes (the node codec is etc.cluster.node.codec, JSON in the sample configuration):
//
//	1   echo as in due's own benchmark: the payload is parsed into {"message": string} and the
//	    same structure is answered (JSON in, JSON out)
//	20  broadcast trigger: the node broadcasts a 64-byte raw payload on route 20 to every
//	    connection of every gate; its first 8 bytes are the node's wall clock at the call
//	    (Unix nanoseconds, big-endian), so a client on the same machine can time the fan-out
//
// Prints {"event":"ready","kind":"node",...} once started and registered; nothing per message.
package main

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/dobyte/due/locate/redis/v2"
	"github.com/dobyte/due/v2"
	"github.com/dobyte/due/v2/cluster"
	"github.com/dobyte/due/v2/cluster/node"
	"github.com/dobyte/due/v2/component"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/session"

	"gatehouse/interop/internal/consulreg"
	"gatehouse/interop/internal/peer"
)

const (
	routeEcho      = 1
	routeBroadcast = 20
	broadcastBytes = 64
)

// greeting is the message of due's benchmark: one string field, JSON-coded by the node codec.
type greeting struct {
	Message string `json:"message"`
}

// announcer runs after the node in the container, so its Start means the node is registered.
type announcer struct {
	component.Base
	n *node.Node
}

func (a *announcer) Start() {
	peer.Emit("ready", map[string]any{"kind": "node", "nid": a.n.Proxy().GetID(), "name": a.n.Proxy().GetName()})
}

func main() {
	reg, err := consulreg.New(consulreg.OptionsFromEtc())
	if err != nil {
		log.Fatalf("consul registry: %v", err)
	}
	defer reg.Close()

	n := node.NewNode(node.WithLocator(redis.NewLocator()), node.WithRegistry(reg))
	proxy := n.Proxy()

	proxy.Router().AddRouteHandler(routeEcho, func(ctx node.Context) {
		var req greeting
		if err := ctx.Parse(&req); err != nil {
			log.Errorf("parse: %v", err)
			return
		}
		if err := ctx.Response(&greeting{Message: req.Message}); err != nil {
			log.Errorf("response: %v", err)
		}
	})

	proxy.Router().AddRouteHandler(routeBroadcast, func(ctx node.Context) {
		payload := make([]byte, broadcastBytes)
		binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
		err := ctx.Proxy().Broadcast(context.Background(), &cluster.BroadcastArgs{
			Kind:    session.Conn,
			Message: &cluster.Message{Route: routeBroadcast, Data: payload},
		})
		if err != nil {
			log.Errorf("broadcast: %v", err)
		}
	})

	container := due.NewContainer()
	container.Add(n, &announcer{n: n})
	container.Serve()
}
