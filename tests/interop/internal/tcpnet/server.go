// Package tcpnet is a TCP (and, in kcp.go, KCP) implementation of due v2.4.1's network.Server,
// for the reference Go gate of the interop suite.
//
// Why it exists: due's module github.com/dobyte/due/network/tcp/v2 is not served by the Go
// module proxy this project can reach, so the reference gate cannot import it. This is a small
// server of ours, written from shared/spec/client-protocol.md §2 (not from due's source), with
// the same etc keys (etc.network.tcp.server.addr, maxConnNum, heartbeatInterval,
// heartbeatMechanism, authorizeTimeout) and due v2.4.1's observable behaviour:
//
//   - packets are framed and recognised with due's own packet settings; every complete frame
//     refreshes the liveness clock; the writer's ticker (first tick one interval after accept)
//     closes a connection silent for more than 2 × heartbeatInterval; with mechanism "resp" each
//     client heartbeat is answered, with "tick" the server sends one every interval;
//   - on admission the reader and writer start, the authorize timer is armed, and only then
//     does the connect handler run (§2.2): a first packet can race ahead of the gate's Connect,
//     and a connection that closes in that window runs the disconnect handler first;
//   - authorizeTimeout > 0 (§2.6): an unbound connection is closed that long after admission or
//     after its last unbind; a bind cancels the timer;
//   - a size field the reader cannot honour — 0, or FFFFFFFC..FFFFFFFF, whose 4 + size wraps
//     around 32 bits — kills only that connection's reader (§1.8, §2.3): the socket stays open
//     and keeps its slot, pushes and tick heartbeats still go out, nothing more is read, and the
//     heartbeat timeout closes it later (never, with heartbeatInterval 0); no process crash;
//   - a large but representable size is waited for (the body is buffered as it arrives, never
//     allocated up front); Close(false) flushes queued packets first.
//
// TCP-level details (write batching, TLS, exact timing) may still differ from due's server. The
// WebSocket gate uses due's own server.
package tcpnet

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dobyte/due/v2/core/buffer"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/network"
	"github.com/dobyte/due/v2/packet"
	"github.com/dobyte/due/v2/utils/xcall"
)

// Options mirror due's etc.network.tcp.server.* keys that this server honours.
type Options struct {
	Proto              string // "tcp" (default) or "kcp"
	Addr               string
	MaxConnNum         int
	HeartbeatInterval  time.Duration
	HeartbeatMechanism string // "resp" or "tick"
	AuthorizeTimeout   time.Duration
	ByteOrder          binary.ByteOrder // of the size field: etc.packet.byteOrder
	KCP                KCPParams        // Proto "kcp": session parameters
}

// OptionsFromEtc reads the options from the loaded due configuration (due's defaults).
func OptionsFromEtc() Options {
	return Options{
		Addr:               etc.Get("etc.network.tcp.server.addr", ":3553").String(),
		MaxConnNum:         etc.Get("etc.network.tcp.server.maxConnNum", 5000).Int(),
		HeartbeatInterval:  etc.Get("etc.network.tcp.server.heartbeatInterval", "10s").Duration(),
		HeartbeatMechanism: etc.Get("etc.network.tcp.server.heartbeatMechanism", "resp").String(),
		AuthorizeTimeout:   etc.Get("etc.network.tcp.server.authorizeTimeout", "0s").Duration(),
		ByteOrder:          byteOrderFromEtc(),
	}
}

// byteOrderFromEtc is due's rule (spec §1.5): "little" (any case) is little endian, anything
// else big endian.
func byteOrderFromEtc() binary.ByteOrder {
	if strings.EqualFold(etc.Get("etc.packet.byteOrder", "big").String(), "little") {
		return binary.LittleEndian
	}
	return binary.BigEndian
}

type Server struct {
	opts  Options
	ln    net.Listener
	ids   atomic.Int64
	count atomic.Int64
	conns sync.Map // id -> *Conn

	onStart      network.StartHandler
	onStop       network.CloseHandler
	onConnect    network.ConnectHandler
	onReceive    network.ReceiveHandler
	onDisconnect network.DisconnectHandler
}

var _ network.Server = (*Server)(nil)

func NewServer(opts Options) *Server {
	if opts.ByteOrder == nil {
		opts.ByteOrder = binary.BigEndian
	}
	if opts.Proto == "" {
		opts.Proto = "tcp"
	}
	return &Server{opts: opts}
}

func (s *Server) Addr() string     { return s.opts.Addr }
func (s *Server) Protocol() string { return s.opts.Proto }

func (s *Server) OnStart(h network.StartHandler)           { s.onStart = h }
func (s *Server) OnStop(h network.CloseHandler)            { s.onStop = h }
func (s *Server) OnConnect(h network.ConnectHandler)       { s.onConnect = h }
func (s *Server) OnReceive(h network.ReceiveHandler)       { s.onReceive = h }
func (s *Server) OnDisconnect(h network.DisconnectHandler) { s.onDisconnect = h }

// Start listens and accepts in the background (due's gate calls Start and moves on).
func (s *Server) Start() error {
	var ln net.Listener
	var err error
	if s.opts.Proto == "kcp" {
		ln, err = listenKCP(s.opts.Addr)
	} else {
		ln, err = net.Listen("tcp", s.opts.Addr)
	}
	if err != nil {
		return err
	}
	s.ln = ln
	if s.onStart != nil {
		s.onStart()
	}
	go s.accept()
	return nil
}

func (s *Server) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.opts.Proto == "kcp" {
				return // kcp-go's listener fails only once closed
			}
			// EMFILE and friends: back off briefly rather than spin.
			log.Warnf("tcp accept failed: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if s.opts.MaxConnNum > 0 && s.count.Load() >= int64(s.opts.MaxConnNum) {
			_ = c.Close()
			continue
		}
		s.count.Add(1)
		if s.opts.Proto == "kcp" {
			applyKCP(c, s.opts.KCP)
		}
		conn := &Conn{
			srv:    s,
			id:     s.ids.Add(1),
			c:      c,
			queue:  make(chan []byte, 1024),
			closed: make(chan struct{}),
		}
		conn.state.Store(int32(network.ConnOpened))
		conn.lastSeen.Store(time.Now().UnixNano())
		s.conns.Store(conn.id, conn)
		// due's order (spec §2.2): reader and writer first, then the authorize timer, then the
		// connect handler. So a fast first packet can reach the gate before its Connect (and
		// before the cid is in its session table), and an immediate close can run the gate's
		// disconnect handling before its connect handling. The goroutines recover panics (as
		// due's do), so a handler that panics in that window is logged, not fatal.
		xcall.Go(conn.read)
		xcall.Go(conn.write)
		conn.armAuthorize()
		if s.onConnect != nil {
			xcall.Call(func() { s.onConnect(conn) })
		}
	}
}

// Stop closes the listener and every connection.
func (s *Server) Stop() error {
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	}
	s.conns.Range(func(_, v any) bool {
		_ = v.(*Conn).Close(true)
		return true
	})
	if s.onStop != nil {
		s.onStop()
	}
	return err
}

// Conn is one client connection.
type Conn struct {
	srv      *Server
	id       int64
	uid      atomic.Int64
	attr     attr
	c        net.Conn
	state    atomic.Int32
	lastSeen atomic.Int64
	queue    chan []byte // packets to write; nil entry = graceful close marker
	closed   chan struct{}
	once     sync.Once

	authMu    sync.Mutex
	authTimer *time.Timer // authorizeTimeout timer while armed
}

var _ network.Conn = (*Conn)(nil)

func (c *Conn) ID() int64             { return c.id }
func (c *Conn) UID() int64            { return c.uid.Load() }
func (c *Conn) Attr() network.Attr    { return &c.attr }
func (c *Conn) Send(msg []byte) error { return c.Push(msg) }

// Bind sets the uid and cancels the authorize timer (spec §2.6).
func (c *Conn) Bind(uid int64) {
	c.uid.Store(uid)
	c.disarmAuthorize()
}

// Unbind clears the uid and re-arms the authorize timer with the full timeout (spec §2.6): the
// gate calls it for an explicit unbind and when the uid is bound to another connection.
func (c *Conn) Unbind() {
	c.uid.Store(0)
	c.armAuthorize()
}

// armAuthorize (re)starts the authorize timer when authorizeTimeout > 0: when it fires and the
// connection is still unbound, the connection is force-closed.
func (c *Conn) armAuthorize() {
	d := c.srv.opts.AuthorizeTimeout
	if d <= 0 {
		return
	}
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if c.authTimer != nil {
		c.authTimer.Stop()
	}
	c.authTimer = time.AfterFunc(d, func() {
		if c.UID() != 0 {
			return
		}
		log.Debugf("tcp conn %d: authorize timeout", c.id)
		xcall.Call(c.shutdown)
	})
}

func (c *Conn) disarmAuthorize() {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if c.authTimer != nil {
		c.authTimer.Stop()
		c.authTimer = nil
	}
}

func (c *Conn) State() network.ConnState { return network.ConnState(c.state.Load()) }

// Push queues a packet; the writer goroutine sends queued packets in order.
func (c *Conn) Push(msg []byte) error {
	if c.State() != network.ConnOpened {
		return errors.New("connection is closed")
	}
	select {
	case c.queue <- msg:
		return nil
	case <-c.closed:
		return errors.New("connection is closed")
	}
}

// Close(true) drops the connection now; Close() sends what is queued first.
func (c *Conn) Close(force ...bool) error {
	if len(force) > 0 && force[0] {
		c.shutdown()
		return nil
	}
	if !c.state.CompareAndSwap(int32(network.ConnOpened), int32(network.ConnHanged)) {
		return nil
	}
	c.disarmAuthorize()
	select {
	case c.queue <- nil:
	case <-c.closed:
	}
	return nil
}

func (c *Conn) shutdown() {
	c.once.Do(func() {
		c.state.Store(int32(network.ConnClosed))
		c.disarmAuthorize()
		close(c.closed)
		_ = c.c.Close()
		c.srv.conns.Delete(c.id)
		// As in due, the slot is released only after the disconnect handling returned: a
		// handler that panics (the gate's, when it runs before the connect handling — spec
		// §2.2) leaks the slot.
		if c.srv.onDisconnect != nil {
			c.srv.onDisconnect(c)
		}
		c.srv.count.Add(-1)
	})
}

func (c *Conn) LocalAddr() (net.Addr, error)  { return c.c.LocalAddr(), nil }
func (c *Conn) RemoteAddr() (net.Addr, error) { return c.c.RemoteAddr(), nil }

func (c *Conn) LocalIP() (string, error)  { return hostOf(c.c.LocalAddr()) }
func (c *Conn) RemoteIP() (string, error) { return hostOf(c.c.RemoteAddr()) }

func hostOf(a net.Addr) (string, error) {
	host, _, err := net.SplitHostPort(a.String())
	return host, err
}

// read processes frames strictly in order (spec §2.3). EOF or a read error closes the
// connection; a size field it cannot honour ends only this reader (the zombie of §1.8).
func (c *Conn) read() {
	r := bufio.NewReader(c.c)
	for {
		var head [4]byte
		if _, err := io.ReadFull(r, head[:]); err != nil {
			c.shutdown()
			return
		}
		size := c.srv.opts.ByteOrder.Uint32(head[:])
		if size+4 < 4 {
			// FFFFFFFC..FFFFFFFF: 4 + size wraps around 32 bits. due v2.4.1's reader dies here
			// (a recovered panic) before this frame counts as liveness; the connection stays
			// open, unread, until the heartbeat timeout (spec §1.8).
			log.Warnf("tcp conn %d: size %#x cannot be read, reader stopped", c.id, size)
			return
		}
		data, err := readBody(r, head, size)
		if err != nil {
			c.shutdown()
			return
		}
		c.lastSeen.Store(time.Now().UnixNano())
		switch c.State() {
		case network.ConnHanged:
			continue // graceful close in progress: read but ignored
		case network.ConnClosed:
			return
		}
		if size == 0 && c.srv.opts.Proto == "kcp" {
			continue // due's KCP server ignores an empty frame (kcp.md V7)
		}
		if size == 0 {
			// due v2.4.1: an empty frame kills the reader after it counted as liveness
			// (spec §1.8, §2.3 step 5; v2.5.8 ignores it instead).
			log.Warnf("tcp conn %d: empty frame, reader stopped", c.id)
			return
		}
		isHeartbeat, err := packet.CheckHeartbeat(data)
		if err != nil {
			log.Warnf("tcp conn %d: bad packet: %v", c.id, err)
			continue
		}
		if isHeartbeat {
			if c.srv.opts.HeartbeatMechanism == "resp" {
				if hb, err := packet.PackHeartbeat(); err == nil {
					_ = c.Push(hb)
				}
			}
			continue
		}
		if c.srv.onReceive != nil {
			c.srv.onReceive(c, buffer.NewBytes(data))
		}
	}
}

// readBody reads the `size` bytes after the size field and returns the whole frame. The buffer
// grows with what arrives (64 KiB at a time): a peer claiming gigabytes and sending nothing costs
// nothing, while the wait for the body is unbounded as in due.
func readBody(r io.Reader, head [4]byte, size uint32) ([]byte, error) {
	const step = 64 << 10
	data := make([]byte, 4, 4+min(int(size), step))
	copy(data, head[:])
	for rem := int(size); rem > 0; {
		n := min(rem, step)
		data = slices.Grow(data, n)[:len(data)+n]
		if _, err := io.ReadFull(r, data[len(data)-n:]); err != nil {
			return nil, err
		}
		rem -= n
	}
	return data, nil
}

func (c *Conn) write() {
	var tick <-chan time.Time
	interval := c.srv.opts.HeartbeatInterval
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-c.closed:
			return
		case msg := <-c.queue:
			if msg == nil { // graceful close: everything before it has been written
				c.shutdown()
				return
			}
			_ = c.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.c.Write(msg); err != nil {
				c.shutdown()
				return
			}
		case now := <-tick:
			if c.lastSeen.Load() < now.Add(-2*interval).UnixNano() {
				log.Debugf("tcp conn %d: heartbeat timeout", c.id)
				c.shutdown()
				return
			}
			if c.srv.opts.HeartbeatMechanism == "tick" {
				if hb, err := packet.PackHeartbeat(); err == nil {
					_ = c.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if _, err = c.c.Write(hb); err != nil {
						c.shutdown()
						return
					}
				}
			}
		}
	}
}

// attr is network.Attr over a sync.Map.
type attr struct{ m sync.Map }

func (a *attr) Set(key, value any)           { a.m.Store(key, value) }
func (a *attr) Get(key any) (any, bool)      { return a.m.Load(key) }
func (a *attr) Del(key any) bool             { _, ok := a.m.LoadAndDelete(key); return ok }
func (a *attr) Visit(fn func(k, v any) bool) { a.m.Range(fn) }
