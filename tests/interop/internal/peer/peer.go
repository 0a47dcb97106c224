// Package peer holds what the interop programs share: one-line JSON output for test harnesses
// and a raw-bytes codec.
package peer

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/dobyte/due/v2/encoding"
)

var outMu sync.Mutex

// Emit prints one machine-readable line to stdout: a JSON object whose first key is "event".
// due's own logs and banners also go to stdout; harnesses keep only lines starting with
// `{"event":`. One write per line, so lines never interleave with due's output.
func Emit(event string, fields map[string]any) {
	obj := make([]byte, 0, 128)
	head, _ := json.Marshal(event)
	obj = append(obj, `{"event":`...)
	obj = append(obj, head...)
	if len(fields) > 0 {
		rest, err := json.Marshal(fields) // map keys come out sorted: stable lines
		if err != nil {
			rest = []byte(fmt.Sprintf(`{"marshal_error":%q}`, err.Error()))
		}
		if len(rest) > 2 {
			obj = append(obj, ',')
			obj = append(obj, rest[1:len(rest)-1]...)
		}
	}
	obj = append(obj, '}', '\n')
	outMu.Lock()
	_, _ = os.Stdout.Write(obj)
	outMu.Unlock()
}

// RawCodec passes payloads through untouched: ctx.Parse(&[]byte) yields the client's exact
// bytes, and []byte replies are sent as they are (due already skips the codec for []byte).
// Anything else is JSON, so typed replies still work.
type RawCodec struct{}

var _ encoding.Codec = RawCodec{}

func (RawCodec) Name() string { return "raw" }

func (RawCodec) Marshal(v any) ([]byte, error) {
	switch b := v.(type) {
	case []byte:
		return b, nil
	case string:
		return []byte(b), nil
	default:
		return json.Marshal(v)
	}
}

func (RawCodec) Unmarshal(data []byte, v any) error {
	switch p := v.(type) {
	case *[]byte:
		*p = append((*p)[:0], data...)
		return nil
	case *string:
		*p = string(data)
		return nil
	default:
		return json.Unmarshal(data, v)
	}
}
