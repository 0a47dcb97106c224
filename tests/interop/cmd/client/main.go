// Command client is a due v2.4.1 client for the interop suite, over TCP, WebSocket or KCP.
//
// Packets are built and parsed by due's own packet package (etc.packet.* settings from
// etc.toml, --etc=PATH or DUE_ETC). WebSocket uses due's own client (network/ws). For TCP,
// due's network/tcp module is not served by the reachable Go module proxy, so the TCP transport
// here is a small one of ours: it writes packets as due packs them, reads them with due's
// packet.ReadMessage, and sends a heartbeat packet every --heartbeat (default 10s, 0 = none).
// For KCP, due's network/kcp module is not served either: the session is kcp-go v5.6.20's own
// (the version due v2.4.1 and v2.5.8 require), dialled as due's KCP client dials it (no cipher,
// FEC 10 data + 3 parity shards; --fec=0,0 for a plain session), carrying the same stream as
// TCP; like due's KCP client it closes itself when no packet arrived for 2 heartbeat intervals
// (a KCP server's close sends nothing).
//
// Flags (due style, --key=value):
//
//	--proto=tcp|ws|kcp transport (default tcp)
//	--addr=HOST:PORT  TCP or KCP gate address (default 127.0.0.1:3553)
//	--fec=D,P         KCP FEC data and parity shards (default 10,3 as due's client; 0,0 = none)
//	--url=ws://...    WebSocket URL (default etc.network.ws.client.url, else ws://127.0.0.1:3553)
//	--heartbeat=10s   heartbeat interval (WS: etc.network.ws.client.heartbeatInterval if unset)
//	--send="R S PAYLOAD;R S PAYLOAD"  scenario mode: send these, then wait for --expect
//	                  messages (default: as many as sent) or fail after --timeout (default 5s)
//
// Without --send it reads commands from stdin, one per line:
//
//	send ROUTE SEQ PAYLOAD...   (payload = rest of the line, may be empty)
//	sendhex ROUTE SEQ HEX
//	heartbeat                   (TCP: one heartbeat packet now)
//	sleep MS
//	close                       (close the connection and exit)
//
// Output, one JSON line each: {"event":"connected",...}, {"event":"message","route":R,"seq":S,
// "payload":"...","hex":"..."}, {"event":"heartbeat"} (TCP only; due's WS client hides them),
// {"event":"disconnected"}. The process exits when the connection closes or stdin ends.
package main

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dobyte/due/network/ws/v2"
	"github.com/dobyte/due/v2/core/buffer"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/flag"
	"github.com/dobyte/due/v2/network"
	"github.com/dobyte/due/v2/packet"
	kcp "github.com/xtaci/kcp-go/v5"

	"gatehouse/interop/internal/peer"
)

// conn is what both transports offer the command loop.
type conn interface {
	send(data []byte) error
	heartbeat() error
	close()
	done() <-chan struct{} // closed once the connection is gone
}

var received = make(chan struct{}, 1<<16) // one token per data message, for --expect

func emitPacket(data []byte) {
	if ok, err := packet.CheckHeartbeat(data); err == nil && ok {
		peer.Emit("heartbeat", nil)
		return
	}
	msg, err := packet.UnpackMessage(data)
	if err != nil {
		peer.Emit("error", map[string]any{"error": "unpack: " + err.Error(), "hex": hex.EncodeToString(data)})
		return
	}
	peer.Emit("message", map[string]any{
		"route": msg.Route, "seq": msg.Seq, "payload": string(msg.Buffer), "hex": hex.EncodeToString(msg.Buffer),
	})
	select {
	case received <- struct{}{}:
	default:
	}
}

// ---- TCP ----

type tcpConn struct {
	c      net.Conn
	wmu    sync.Mutex
	once   sync.Once
	closed chan struct{}
	// KCP: the server's close is silent; give up after 2 intervals without a packet (due).
	silentClose bool
	last        atomic.Int64 // unix ns of the last packet received
}

func dialTCP(addr string, interval time.Duration) (*tcpConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	t := &tcpConn{c: c, closed: make(chan struct{})}
	go t.read()
	if interval > 0 {
		go t.beat(interval)
	}
	return t, nil
}

func (t *tcpConn) read() {
	r := bufio.NewReader(t.c)
	for {
		data, err := packet.ReadMessage(r)
		if err != nil {
			t.close()
			return
		}
		t.last.Store(time.Now().UnixNano())
		if data == nil { // a zero-size frame carries nothing
			continue
		}
		emitPacket(data)
	}
}

func (t *tcpConn) beat(interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-t.closed:
			return
		case <-ticker.C:
			if t.silentClose && time.Since(time.Unix(0, t.last.Load())) > 2*interval {
				t.close()
				return
			}
			if t.heartbeat() != nil {
				return
			}
		}
	}
}

func (t *tcpConn) write(b []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	_ = t.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := t.c.Write(b)
	return err
}

func (t *tcpConn) send(data []byte) error { return t.write(data) }

func (t *tcpConn) heartbeat() error {
	hb, err := packet.PackHeartbeat()
	if err != nil {
		return err
	}
	return t.write(hb)
}

func (t *tcpConn) close() {
	t.once.Do(func() {
		_ = t.c.Close()
		close(t.closed)
	})
}

func (t *tcpConn) done() <-chan struct{} { return t.closed }

// ---- KCP (kcp-go, dialled as due's KCP client dials) ----

func dialKCP(addr string, interval time.Duration, fec string) (*tcpConn, error) {
	var data, parity int
	if _, err := fmt.Sscanf(fec, "%d,%d", &data, &parity); err != nil {
		return nil, fmt.Errorf("bad --fec %q (D,P)", fec)
	}
	sess, err := kcp.DialWithOptions(addr, nil, data, parity)
	if err != nil {
		return nil, err
	}
	t := &tcpConn{c: sess, closed: make(chan struct{}), silentClose: true}
	t.last.Store(time.Now().UnixNano())
	go t.read()
	if interval > 0 {
		go t.beat(interval)
	}
	return t, nil
}

// ---- WebSocket (due's client) ----

type wsConn struct {
	c      network.Conn
	once   sync.Once
	closed chan struct{}
}

func dialWS(url string, interval time.Duration) (*wsConn, error) {
	w := &wsConn{closed: make(chan struct{})}
	client := ws.NewClient(ws.WithClientUrl(url), ws.WithClientHeartbeatInterval(interval))
	client.OnReceive(func(_ network.Conn, buf buffer.Buffer) {
		data := append([]byte(nil), buf.Bytes()...) // the buffer is recycled after we return
		emitPacket(data)
	})
	client.OnDisconnect(func(network.Conn) { w.markClosed() })
	c, err := client.Dial()
	if err != nil {
		return nil, err
	}
	w.c = c
	return w, nil
}

func (w *wsConn) markClosed() { w.once.Do(func() { close(w.closed) }) }

func (w *wsConn) send(data []byte) error { return w.c.Push(data) }

func (w *wsConn) heartbeat() error { return errors.New("due's WS client sends heartbeats itself") }

func (w *wsConn) close() {
	_ = w.c.Close(true)
	w.markClosed()
}

func (w *wsConn) done() <-chan struct{} { return w.closed }

// ---- commands ----

func pack(route, seq, payload string, isHex bool) ([]byte, error) {
	r, err := strconv.ParseInt(route, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("bad route %q", route)
	}
	s, err := strconv.ParseInt(seq, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("bad seq %q", seq)
	}
	body := []byte(payload)
	if isHex {
		if body, err = hex.DecodeString(payload); err != nil {
			return nil, fmt.Errorf("bad hex payload: %v", err)
		}
	}
	return packet.PackMessage(&packet.Message{Route: int32(r), Seq: int32(s), Buffer: body})
}

// run executes one command line; it returns false when the client should stop.
func run(c conn, line string) bool {
	fields := strings.SplitN(strings.TrimSpace(line), " ", 4)
	fail := func(err error) bool {
		peer.Emit("error", map[string]any{"error": err.Error(), "command": line})
		return true
	}
	switch fields[0] {
	case "":
		return true
	case "send", "sendhex":
		if len(fields) < 3 {
			return fail(errors.New("usage: send ROUTE SEQ PAYLOAD"))
		}
		payload := ""
		if len(fields) == 4 {
			payload = fields[3]
		}
		data, err := pack(fields[1], fields[2], payload, fields[0] == "sendhex")
		if err != nil {
			return fail(err)
		}
		if err = c.send(data); err != nil {
			return fail(err)
		}
		return true
	case "heartbeat":
		if err := c.heartbeat(); err != nil {
			return fail(err)
		}
		return true
	case "sleep":
		ms, err := strconv.Atoi(strings.TrimSpace(strings.Join(fields[1:], " ")))
		if err != nil {
			return fail(errors.New("usage: sleep MS"))
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		return true
	case "close":
		return false
	default:
		return fail(errors.New("unknown command"))
	}
}

func main() {
	proto := flag.String("proto", "tcp")
	heartbeat := flag.Duration("heartbeat", etc.Get("etc.network.ws.client.heartbeatInterval", "10s").Duration())

	var c conn
	var err error
	switch proto {
	case "tcp":
		addr := flag.String("addr", "127.0.0.1:3553")
		c, err = dialTCP(addr, heartbeat)
	case "ws":
		url := flag.String("url", etc.Get("etc.network.ws.client.url", "ws://127.0.0.1:3553").String())
		c, err = dialWS(url, heartbeat)
	case "kcp":
		addr := flag.String("addr", "127.0.0.1:3553")
		c, err = dialKCP(addr, heartbeat, flag.String("fec", "10,3"))
	default:
		err = fmt.Errorf("unknown --proto %q (tcp, ws or kcp)", proto)
	}
	if err != nil {
		peer.Emit("error", map[string]any{"error": "connect: " + err.Error()})
		os.Exit(1)
	}
	peer.Emit("connected", map[string]any{"proto": proto})

	if script := flag.String("send"); script != "" {
		os.Exit(scenario(c, script))
	}

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for {
		select {
		case <-c.done():
			peer.Emit("disconnected", nil)
			return
		case line, ok := <-lines:
			if !ok || !run(c, line) {
				c.close()
				peer.Emit("disconnected", map[string]any{"by": "client"})
				return
			}
		}
	}
}

// scenario sends ';'-separated "ROUTE SEQ PAYLOAD" messages and waits for the replies.
func scenario(c conn, script string) int {
	sent := 0
	for _, item := range strings.Split(script, ";") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		if !run(c, "send "+strings.TrimSpace(item)) {
			return 1
		}
		sent++
	}
	expect := flag.Int("expect", sent)
	timeout := flag.Duration("timeout", 5*time.Second)
	deadline := time.After(timeout)
	for got := 0; got < expect; {
		select {
		case <-received:
			got++
		case <-c.done():
			peer.Emit("disconnected", nil)
			return 1
		case <-deadline:
			peer.Emit("timeout", map[string]any{"expected": expect, "received": got})
			c.close()
			return 1
		}
	}
	c.close()
	return 0
}
