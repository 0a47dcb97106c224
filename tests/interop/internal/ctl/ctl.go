// Package ctl is the control HTTP surface the interop nodes share (the v2.4.1 node in
// cmd/node, the v2.5.8 node in v25/cmd/node25): query parsing, the JSON envelope, message lines.
//
// It names only due types whose shape both versions share (session.Kind, cluster.Message,
// cluster.State), so each module compiles it against its own due version.
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dobyte/due/v2/cluster"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/session"

	"gatehouse/interop/internal/peer"
)

// Query is one control request: its URL parameters and body; the first parameter error sticks.
type Query struct {
	r    *http.Request
	Body []byte
	err  error
}

// Str is a parameter as given ("" when absent).
func (q *Query) Str(key string) string { return q.r.URL.Query().Get(key) }

// Bool is true for the parameter "true".
func (q *Query) Bool(key string) bool { return q.Str(key) == "true" }

// Int64 parses a parameter; absent is 0.
func (q *Query) Int64(key string) int64 {
	s := q.Str(key)
	if s == "" {
		return 0
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil && q.err == nil {
		q.err = errors.New("bad " + key + ": " + s)
	}
	return v
}

// Int64s parses a comma-separated list.
func (q *Query) Int64s(key string) []int64 {
	var out []int64
	for _, s := range strings.Split(q.Str(key), ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil && q.err == nil {
			q.err = errors.New("bad " + key + ": " + s)
		}
		out = append(out, v)
	}
	return out
}

// Kind is kind=conn (the default) or kind=user.
func (q *Query) Kind() session.Kind {
	switch q.Str("kind") {
	case "user":
		return session.User
	case "", "conn":
		return session.Conn
	default:
		if q.err == nil {
			q.err = errors.New("kind must be conn or user")
		}
		return session.Conn
	}
}

// Message is route and seq from the parameters, the body as data.
func (q *Query) Message() *cluster.Message {
	return &cluster.Message{Route: int32(q.Int64("route")), Seq: int32(q.Int64("seq")), Data: q.Body}
}

// States parses states=work,busy,… for the Fetch*List filters.
func (q *Query) States() []cluster.State {
	var out []cluster.State
	for _, s := range strings.Split(q.Str("states"), ",") {
		switch strings.TrimSpace(s) {
		case "work":
			out = append(out, cluster.Work)
		case "busy":
			out = append(out, cluster.Busy)
		case "hang":
			out = append(out, cluster.Hang)
		case "shut":
			out = append(out, cluster.Shut)
		}
	}
	return out
}

// Mux answers every endpoint with {"ok":true,"result":…} or {"ok":false,"error":…} (HTTP 500);
// each call gets 10 s.
type Mux struct{ *http.ServeMux }

// NewMux returns an empty control mux.
func NewMux() Mux { return Mux{http.NewServeMux()} }

// Handle adds one endpoint.
func (m Mux) Handle(path string, fn func(ctx context.Context, q *Query) (any, error)) {
	m.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		q := &Query{r: r, Body: body, err: err}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		var result any
		if q.err == nil {
			result, err = fn(ctx, q)
			if q.err != nil { // a parameter error found while building the call
				err = q.err
			}
		} else {
			err = q.err
		}
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "result": result})
	})
}

// Routed is what a node route handler's context offers in both due versions.
type Routed interface {
	Parse(v any) error
	Route() int32
	Seq() int32
	GID() string
	CID() int64
	UID() int64
}

// MessageLine prints the message a route handler got (a "message" line) and returns its payload.
func MessageLine(ctx Routed) []byte {
	var payload []byte
	if err := ctx.Parse(&payload); err != nil {
		log.Errorf("parse failed: %v", err)
	}
	peer.Emit("message", map[string]any{
		"route": ctx.Route(), "seq": ctx.Seq(), "gid": ctx.GID(), "cid": ctx.CID(), "uid": ctx.UID(),
		"payload": string(payload),
	})
	return payload
}
