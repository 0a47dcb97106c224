// Drives due's registry/nacos module (the pseudo-version pinned in go.mod, on nacos-sdk-go v2) against
// a real Nacos server and checks what it wrote through Nacos's HTTP open API (docs/ops/nacos.md).
//
//	nacosprobe -addr 127.0.0.1:8848 -dir DIR            register, watch, re-register, deregister: checks
//	nacosprobe -addr 127.0.0.1:8848 -dir DIR -mode hold register one gate and block until killed
//	nacosprobe -addr 127.0.0.1:8848 -dir DIR -mode node -id ID -endpoint drpc://HOST:PORT
//	    register a node (route 1) as a due node does, then watch the gate service as a due node
//	    does: one JSON line per list ({"event":"gates","gates":[{id,kind,alias,state,endpoint}]});
//	    ends when stdin closes (deregistering the node) — tests/nacos.rs drives it
//
// Exits non-zero with a reason on the first mismatch; prints the open API records it saw.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/dobyte/due/registry/nacos/v2"
	"github.com/dobyte/due/v2/registry"
)

type host struct {
	InstanceID  string            `json:"instanceId"`
	IP          string            `json:"ip"`
	Port        int               `json:"port"`
	Weight      float64           `json:"weight"`
	Healthy     bool              `json:"healthy"`
	Enabled     bool              `json:"enabled"`
	Ephemeral   bool              `json:"ephemeral"`
	ClusterName string            `json:"clusterName"`
	ServiceName string            `json:"serviceName"`
	Metadata    map[string]string `json:"metadata"`
}

type list struct {
	Name  string `json:"name"`
	Hosts []host `json:"hosts"`
}

var (
	addr     = flag.String("addr", "127.0.0.1:8848", "Nacos HTTP address")
	nodeID   = flag.String("id", "node-1", "node mode: the node's ID")
	endpoint = flag.String("endpoint", "drpc://127.0.0.1:40001?is_secure=false", "node mode: the node's link endpoint")
)

// emit prints one JSON line.
func emit(v map[string]any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

// runNode registers a node serving route 1 and reports every list of gates its watch yields,
// until stdin closes; then deregisters.
func runNode(ctx context.Context, reg *nacos.Registry, id, endpoint string) {
	node := &registry.ServiceInstance{
		ID: id, Name: "node", Kind: "node", Alias: "node", State: "work",
		Routes: []registry.Route{{ID: 1}}, Endpoint: endpoint, Weight: 1,
	}
	tries, err := registerRetry(ctx, reg, node)
	if err != nil {
		fail("register node: %v", err)
	}
	emit(map[string]any{"event": "registered", "tries": tries})
	w, err := reg.Watch(ctx, "gate")
	if err != nil {
		fail("watch: %v", err)
	}
	go func() {
		for {
			s, err := w.Next()
			if err != nil {
				return
			}
			gates := make([]map[string]string, 0, len(s))
			for _, g := range s {
				gates = append(gates, map[string]string{
					"id": g.ID, "kind": g.Kind, "alias": g.Alias, "state": g.State, "endpoint": g.Endpoint,
				})
			}
			emit(map[string]any{"event": "gates", "gates": gates})
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = w.Stop()
	if err := reg.Deregister(ctx, node); err != nil {
		fail("deregister node: %v", err)
	}
	emit(map[string]any{"event": "deregistered"})
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

// openList reads a service's instances through the open API (what an operator or another client sees).
func openList(service string) (list, string) {
	q := url.Values{"serviceName": {service}, "groupName": {"DEFAULT_GROUP"}}
	resp, err := http.Get("http://" + *addr + "/nacos/v1/ns/instance/list?" + q.Encode())
	if err != nil {
		fail("open API: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		fail("open API status %d: %s", resp.StatusCode, body)
	}
	var l list
	if err := json.Unmarshal(body, &l); err != nil {
		fail("open API body %q: %v", body, err)
	}
	return l, string(body)
}

// waitList polls the open API (bounded: 100 x 100 ms) until cond holds, and returns how long it took.
func waitList(service string, what string, cond func(list) bool) (list, string, time.Duration) {
	start := time.Now()
	for i := 0; i < 100; i++ {
		l, raw := openList(service)
		if cond(l) {
			return l, raw, time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	l, raw := openList(service)
	fail("%s: not seen within 10 s; last list %s", what, raw)
	return l, raw, 0
}

func newRegistry(dir string) *nacos.Registry {
	return nacos.NewRegistry(
		nacos.WithUrls("http://"+*addr+"/nacos"),
		nacos.WithCacheDir(dir+"/cache"),
		nacos.WithLogDir(dir+"/log"),
		nacos.WithLogLevel("debug"),
	)
}

// registerRetry registers, retrying (bounded: 20 x 250 ms) while the SDK's first gRPC connection is
// not yet known to the server: nacos-sdk-go sends its first request before the server has processed
// the connection setup, and on a loaded machine the server answers "Connection is unregistered"
// (errorCode 301) until the SDK reconnects. due's registry does not retry (docs/ops/nacos.md).
func registerRetry(ctx context.Context, reg *nacos.Registry, ins *registry.ServiceInstance) (int, error) {
	var err error
	for i := 1; i <= 20; i++ {
		if err = reg.Register(ctx, ins); err == nil {
			return i, nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return 20, err
}

func gate(id, state string) *registry.ServiceInstance {
	return &registry.ServiceInstance{
		ID: id, Name: "gate", Kind: "gate", Alias: "gate", State: state,
		Endpoint: "drpc://127.0.0.1:40000?is_secure=false",
		Metadata: map[string]string{"region": "eu"},
	}
}

func expect(what string, got, want any) {
	if fmt.Sprint(got) != fmt.Sprint(want) {
		fail("%s: got %v, want %v", what, got, want)
	}
}

func main() {
	dir := flag.String("dir", os.TempDir(), "directory for the SDK's cache and log")
	mode := flag.String("mode", "check", "check | hold | node")
	flag.Parse()
	ctx := context.Background()
	reg := newRegistry(*dir)

	if *mode == "node" {
		runNode(ctx, reg, *nodeID, *endpoint)
		return
	}

	if *mode == "hold" {
		if _, err := registerRetry(ctx, reg, gate("hold-1", "work")); err != nil {
			fail("register: %v", err)
		}
		fmt.Println("registered hold-1")
		w, err := reg.Watch(ctx, "gate")
		if err != nil {
			fail("watch: %v", err)
		}
		for {
			s, err := w.Next()
			if err != nil {
				fail("watch: %v", err)
			}
			fmt.Printf("%s watch: %d instances\n", time.Now().Format("15:04:05.000"), len(s))
		}
	}

	g := gate("gate-1", "work")
	start := time.Now()
	tries, err := registerRetry(ctx, reg, g)
	if err != nil {
		fail("register gate: %v", err)
	}
	regTook := time.Since(start)
	l, raw, seen := waitList("gate", "gate registered", func(l list) bool { return len(l.Hosts) == 1 })
	fmt.Printf("register returned after %v (%d tries), visible on the open API %v later\n", regTook, tries, seen)
	fmt.Println("open API gate:", raw)
	h := l.Hosts[0]
	expect("service name", l.Name, "DEFAULT_GROUP@@gate")
	expect("ip", h.IP, "127.0.0.1")
	expect("port", h.Port, 40000)
	expect("ephemeral", h.Ephemeral, true)
	expect("cluster", h.ClusterName, "DEFAULT")
	expect("weight", h.Weight, 1)
	expect("healthy", h.Healthy, true)
	expect("metadata", h.Metadata, map[string]string{
		"id": "gate-1", "name": "gate", "kind": "gate", "alias": "gate", "state": "work",
		"endpoint": "drpc://127.0.0.1:40000?is_secure=false", "metadata": `{"region":"eu"}`,
	})

	node := &registry.ServiceInstance{
		ID: "node-1", Name: "node", Kind: "node", Alias: "mahjong", State: "work",
		Events:   []int{1, 3},
		Routes:   []registry.Route{{ID: 1}, {ID: 2, Stateful: true}, {ID: 3, Internal: true, Authorized: true}},
		Endpoint: "drpc://127.0.0.1:40001?is_secure=false", Weight: 1,
	}
	if err := reg.Register(ctx, node); err != nil {
		fail("register node: %v", err)
	}
	_, raw, _ = waitList("node", "node registered", func(l list) bool { return len(l.Hosts) == 1 })
	fmt.Println("open API node:", raw)
	got, err := reg.Services(ctx, "node")
	if err != nil || len(got) != 1 {
		fail("Services(node): %v %v", got, err)
	}
	expect("Services(node) routes", fmt.Sprintf("%+v", got[0].Routes), fmt.Sprintf("%+v", node.Routes))
	expect("Services(node) events", got[0].Events, node.Events)
	expect("Services(node) weight", got[0].Weight, 1)

	w, err := reg.Watch(ctx, "gate")
	if err != nil {
		fail("watch: %v", err)
	}
	first, err := w.Next()
	if err != nil || len(first) != 1 || first[0].State != "work" {
		fail("watch first: %v %v", first, err)
	}

	// A state change is a full re-register of the same instance (same ip:port, new metadata).
	start = time.Now()
	if err := reg.Register(ctx, gate("gate-1", "hang")); err != nil {
		fail("re-register: %v", err)
	}
	_, raw, seen = waitList("gate", "state hang", func(l list) bool {
		return len(l.Hosts) == 1 && l.Hosts[0].Metadata["state"] == "hang"
	})
	fmt.Printf("state change visible on the open API after %v: %s\n", seen, raw)
	deadline := time.After(10 * time.Second)
	for watched := false; !watched; {
		ch := make(chan []*registry.ServiceInstance, 1)
		go func() { s, _ := w.Next(); ch <- s }()
		select {
		case s := <-ch:
			watched = len(s) == 1 && s[0].State == "hang"
		case <-deadline:
			fail("watch did not report state hang within 10 s")
		}
	}
	fmt.Printf("watcher saw state hang after %v\n", time.Since(start))

	start = time.Now()
	if err := reg.Deregister(ctx, g); err != nil {
		fail("deregister: %v", err)
	}
	_, _, seen = waitList("gate", "gate deregistered", func(l list) bool { return len(l.Hosts) == 0 })
	fmt.Printf("deregister visible on the open API after %v\n", time.Since(start))
	_ = w.Stop()
	if err := reg.Deregister(ctx, node); err != nil {
		fail("deregister node: %v", err)
	}
	fmt.Println("PASS: due registry/nacos register, metadata, services, watch, state change, deregister")
}
