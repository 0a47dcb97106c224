package tcpnet

// KCP: the reference gate's stand-in for due v2.4.1's network/kcp server (due's module is not
// served by the reachable Go module proxy). The listener and sessions are kcp-go v5.6.20's own —
// the version due's network/kcp requires — listened as due listens (no cipher, 0 data / 0
// parity shards: FEC-framed client datagrams are understood, the server's are plain); on top of
// them runs this package's connection logic (heartbeats, authorizeTimeout, maxConnNum, packets),
// which due's KCP server shares with its TCP server (shared/spec/kcp.md §5, §6), with the one
// difference the spec records: a size-0 frame is ignored instead of stopping the reader (V7).
// The etc.network.kcp.server.* session parameters are applied as due applies them, after the
// session was accepted (§2.3): mtu, noDelay (exactly 4), ackNoDelay, writeDelay, windowSize
// (exactly 2); readBuffer/writeBuffer have no effect on a listener's sessions, as in due.

import (
	"net"

	"github.com/dobyte/due/v2/etc"
	kcp "github.com/xtaci/kcp-go/v5"
)

// KCPParams are the etc.network.kcp.server.* session parameters (unset = kcp-go's default).
type KCPParams struct {
	Mtu        int
	NoDelay    []int
	AckNoDelay bool
	WriteDelay bool
	WindowSize []int
}

// KCPOptionsFromEtc reads etc.network.kcp.server.* (due's defaults).
func KCPOptionsFromEtc() Options {
	const k = "etc.network.kcp.server."
	return Options{
		Proto:              "kcp",
		Addr:               etc.Get(k+"addr", ":3553").String(),
		MaxConnNum:         etc.Get(k+"maxConnNum", 5000).Int(),
		HeartbeatInterval:  etc.Get(k+"heartbeatInterval", "10s").Duration(),
		HeartbeatMechanism: etc.Get(k+"heartbeatMechanism", "resp").String(),
		AuthorizeTimeout:   etc.Get(k+"authorizeTimeout", "0s").Duration(),
		ByteOrder:          byteOrderFromEtc(),
		KCP: KCPParams{
			Mtu:        etc.Get(k+"mtu", 0).Int(),
			NoDelay:    etc.Get(k + "noDelay").Ints(),
			AckNoDelay: etc.Get(k+"ackNoDelay", false).Bool(),
			WriteDelay: etc.Get(k+"writeDelay", false).Bool(),
			WindowSize: etc.Get(k + "windowSize").Ints(),
		},
	}
}

func listenKCP(addr string) (net.Listener, error) {
	return kcp.ListenWithOptions(addr, nil, 0, 0)
}

// applyKCP sets the configured parameters on an accepted session, in due's order.
func applyKCP(c net.Conn, p KCPParams) {
	s, ok := c.(*kcp.UDPSession)
	if !ok {
		return
	}
	if p.Mtu > 0 {
		s.SetMtu(p.Mtu)
	}
	if len(p.NoDelay) == 4 {
		s.SetNoDelay(p.NoDelay[0], p.NoDelay[1], p.NoDelay[2], p.NoDelay[3])
	}
	if p.AckNoDelay {
		s.SetACKNoDelay(true)
	}
	if p.WriteDelay {
		s.SetWriteDelay(true)
	}
	if len(p.WindowSize) == 2 {
		s.SetWindowSize(p.WindowSize[0], p.WindowSize[1])
	}
}
