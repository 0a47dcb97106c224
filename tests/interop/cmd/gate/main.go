// Command gate is due v2.4.1's own gate (cluster/gate): the reference the Rust gate is compared
// against. Redis locator (due's locate/redis), Consul or etcd registry (internal/regsel: due's
// modules are not served by the reachable proxy), configuration from etc.toml (--etc=PATH or DUE_ETC).
//
// due v2.4.1 gives a gate exactly one client-facing server, so one process serves one protocol:
//
//	--proto=ws   due's own WebSocket server (network/ws), etc.network.ws.server.*  (default)
//	--proto=tcp  internal/tcpnet (due's network/tcp is not served), etc.network.tcp.server.*
//	--proto=kcp  internal/tcpnet over kcp-go v5.6.20 (due's network/kcp is not served either),
//	             etc.network.kcp.server.*
//
// (or etc.interop.gate.proto). Run two processes with distinct etc.cluster.gate.id for both.
// Once started it prints {"event":"ready","kind":"gate","gid":"...","proto":"ws","addr":"..."};
// on SIGTERM/SIGINT it shuts down as due does (re-register hang, drain, deregister) and exits 0.
package main

import (
	"github.com/dobyte/due/locate/redis/v2"
	"github.com/dobyte/due/network/ws/v2"
	"github.com/dobyte/due/v2"
	"github.com/dobyte/due/v2/cluster/gate"
	"github.com/dobyte/due/v2/component"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/flag"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/network"
	"github.com/dobyte/due/v2/utils/xuuid"

	"gatehouse/interop/internal/peer"
	"gatehouse/interop/internal/regsel"
	"gatehouse/interop/internal/tcpnet"
)

// announcer runs after the gate in the container (components start in order), so its Start
// means the gate's servers are listening and its instance is registered.
type announcer struct {
	component.Base
	fields map[string]any
}

func (a *announcer) Start() { peer.Emit("ready", a.fields) }

func main() {
	proto := flag.String("proto", etc.Get("etc.interop.gate.proto", "ws").String())
	var server network.Server
	switch proto {
	case "ws":
		server = ws.NewServer()
	case "tcp":
		server = tcpnet.NewServer(tcpnet.OptionsFromEtc())
	case "kcp":
		server = tcpnet.NewServer(tcpnet.KCPOptionsFromEtc())
	default:
		log.Fatalf("unknown --proto %q (ws, tcp or kcp)", proto)
	}

	reg, closeRegistry := regsel.New()
	defer closeRegistry()

	// Decide the gid here (as due would: etc.cluster.gate.id or a new UUID) so we can print it.
	gid := etc.Get("etc.cluster.gate.id").String()
	if gid == "" {
		gid = xuuid.UUID()
	}

	g := gate.NewGate(
		gate.WithID(gid),
		gate.WithServer(server),
		gate.WithLocator(redis.NewLocator()),
		gate.WithRegistry(reg),
	)

	container := due.NewContainer()
	container.Add(g, &announcer{fields: map[string]any{"kind": "gate", "gid": gid, "proto": proto, "addr": server.Addr()}})
	// Serve blocks until SIGTERM/SIGINT and the shutdown; due closes its console logger (stdout)
	// on the way out, so nothing can be printed after it.
	container.Serve()
}
