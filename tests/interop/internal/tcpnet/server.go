// Package tcpnet is a TCP implementation of due v2.4.1's network.Server, for the reference Go
// gate of the interop suite.
//
// Why it exists: due's module github.com/dobyte/due/network/tcp/v2 is not served by the Go
// module proxy this project can reach, so the reference gate cannot import it. This is a small
// server of ours with the behaviour the gate relies on and the same etc keys
// (etc.network.tcp.server.addr, maxConnNum, heartbeatInterval, heartbeatMechanism): packets are
// framed and recognised by due's own packet package; every packet refreshes the liveness clock;
// a connection silent for 2 × heartbeatInterval is closed; with mechanism "resp" each client
// heartbeat is answered, with "tick" the server sends one every interval; Close(false) flushes
// queued packets first. It is NOT due's code: TCP-level details (write batching, TLS, authorize
// timeout, exact timing) may differ from due's server. The WebSocket gate uses due's own server.
package tcpnet

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dobyte/due/v2/core/buffer"
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/network"
	"github.com/dobyte/due/v2/packet"
)

// Options mirror due's etc.network.tcp.server.* keys that this server honours.
type Options struct {
	Addr               string
	MaxConnNum         int
	HeartbeatInterval  time.Duration
	HeartbeatMechanism string // "resp" or "tick"
}

// OptionsFromEtc reads the options from the loaded due configuration (due's defaults).
func OptionsFromEtc() Options {
	return Options{
		Addr:               etc.Get("etc.network.tcp.server.addr", ":3553").String(),
		MaxConnNum:         etc.Get("etc.network.tcp.server.maxConnNum", 5000).Int(),
		HeartbeatInterval:  etc.Get("etc.network.tcp.server.heartbeatInterval", "10s").Duration(),
		HeartbeatMechanism: etc.Get("etc.network.tcp.server.heartbeatMechanism", "resp").String(),
	}
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

func NewServer(opts Options) *Server { return &Server{opts: opts} }

func (s *Server) Addr() string     { return s.opts.Addr }
func (s *Server) Protocol() string { return "tcp" }

func (s *Server) OnStart(h network.StartHandler)           { s.onStart = h }
func (s *Server) OnStop(h network.CloseHandler)            { s.onStop = h }
func (s *Server) OnConnect(h network.ConnectHandler)       { s.onConnect = h }
func (s *Server) OnReceive(h network.ReceiveHandler)       { s.onReceive = h }
func (s *Server) OnDisconnect(h network.DisconnectHandler) { s.onDisconnect = h }

// Start listens and accepts in the background (due's gate calls Start and moves on).
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.opts.Addr)
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
			if errors.Is(err, net.ErrClosed) {
				return
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
		if s.onConnect != nil {
			s.onConnect(conn)
		}
		go conn.read()
		go conn.write()
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
}

var _ network.Conn = (*Conn)(nil)

func (c *Conn) ID() int64             { return c.id }
func (c *Conn) UID() int64            { return c.uid.Load() }
func (c *Conn) Attr() network.Attr    { return &c.attr }
func (c *Conn) Bind(uid int64)        { c.uid.Store(uid) }
func (c *Conn) Unbind()               { c.uid.Store(0) }
func (c *Conn) Send(msg []byte) error { return c.Push(msg) }

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
	select {
	case c.queue <- nil:
	case <-c.closed:
	}
	return nil
}

func (c *Conn) shutdown() {
	c.once.Do(func() {
		c.state.Store(int32(network.ConnClosed))
		close(c.closed)
		_ = c.c.Close()
		c.srv.conns.Delete(c.id)
		c.srv.count.Add(-1)
		if c.srv.onDisconnect != nil {
			c.srv.onDisconnect(c)
		}
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

func (c *Conn) read() {
	r := bufio.NewReader(c.c)
	for {
		data, err := packet.ReadMessage(r)
		if err != nil {
			c.shutdown()
			return
		}
		c.lastSeen.Store(time.Now().UnixNano())
		if data == nil || c.State() != network.ConnOpened {
			continue // empty frame, or closing: ignore input
		}
		isHeartbeat, err := packet.CheckHeartbeat(data)
		if err != nil {
			log.Warnf("tcp conn %d: bad packet: %v", c.id, err)
			continue
		}
		if isHeartbeat {
			if c.srv.opts.HeartbeatMechanism != "tick" {
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
