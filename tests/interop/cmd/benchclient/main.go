// Command benchclient is the due-style load harness of the benchmark: due v2.4.1's own cluster
// client over due's own WebSocket client, in the shape of due's benchmark (flood).
//
// --conns connections are dialled; together they drain a shared count of --requests requests on
// route 1, each a JSON {"message": "aaa…"} of --size bytes, without waiting for replies; every
// reply on route 1 is counted. When all replies are in (or --timeout passes) it prints one line:
// {"event":"result","conns":C,"requests":N,"received":R,"seconds":S,"tps":T}.
//
// Flags: --etc=DIR (packet settings, ws client keys), --url=ws://HOST:PORT/, --conns=100,
// --requests=100000, --size=1024, --timeout=60s.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dobyte/due/network/ws/v2"
	"github.com/dobyte/due/v2/cluster"
	"github.com/dobyte/due/v2/cluster/client"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/flag"
	"github.com/dobyte/due/v2/log"

	"gatehouse/interop/internal/peer"
)

const routeEcho = 1

func main() {
	url := flag.String("url", etc.Get("etc.network.ws.client.url", "ws://127.0.0.1:3554").String())
	conns := flag.Int("conns", 100)
	requests := flag.Int64("requests", 100000)
	size := flag.Int("size", 1024)
	timeout := flag.Duration("timeout", 60*time.Second)

	// A JSON object of exactly --size bytes: {"message":"aaa…"} (14 bytes of framing).
	body, err := json.Marshal(map[string]string{"message": strings.Repeat("a", max(size-14, 0))})
	if err != nil {
		log.Fatalf("payload: %v", err)
	}

	c := client.NewClient(client.WithClient(ws.NewClient(ws.WithClientUrl(url))))
	var received atomic.Int64
	all := make(chan struct{})
	c.Proxy().AddRouteHandler(routeEcho, func(ctx *client.Context) {
		if received.Add(1) == requests {
			close(all)
		}
	})
	c.Init()
	c.Start()

	dialled := make([]*client.Conn, 0, conns)
	for i := 0; i < conns; i++ {
		conn, err := c.Proxy().Dial()
		if err != nil {
			log.Fatalf("dial %d: %v", i, err)
		}
		dialled = append(dialled, conn)
	}

	var budget atomic.Int64
	budget.Store(requests)
	start := time.Now()
	var wg sync.WaitGroup
	for _, conn := range dialled {
		wg.Add(1)
		go func(conn *client.Conn) {
			defer wg.Done()
			for seq := int32(1); budget.Add(-1) >= 0; seq = seq%32767 + 1 {
				if err := conn.Push(&cluster.Message{Route: routeEcho, Seq: seq, Data: body}); err != nil {
					log.Errorf("push: %v", err)
					return
				}
			}
		}(conn)
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(timeout):
	}
	secs := time.Since(start).Seconds()
	got := received.Load()
	peer.Emit("result", map[string]any{
		"conns": conns, "requests": requests, "received": got, "seconds": secs, "tps": float64(got) / secs,
	})
	for _, conn := range dialled {
		_ = conn.Close()
	}
	if got < requests {
		os.Exit(1)
	}
}
