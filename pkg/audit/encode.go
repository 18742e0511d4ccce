package audit

import (
	"errors"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendLine appends ev as one JSON line (newline included) to b. The
// output is byte for byte what encoding/json produces for Event with HTML
// escaping off (a fuzz test holds it to that), at a fraction of the cost:
// the sinks encode every event, so this is on the audit hot path.
func appendLine(b []byte, ev *Event) ([]byte, error) {
	if !validTime(ev.Time) || !finite(ev.LatencyMS) {
		return b, errors.New("event has an unencodable time or latency")
	}
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(ev.V), 10)
	b = append(b, `,"ts":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = appendString(b, ev.Kind)
	b = optString(b, `,"sandbox":`, ev.Sandbox)
	b = optUint(b, `,"cgroup_id":`, ev.CgroupID)
	b = optUint(b, `,"pid":`, uint64(ev.PID))
	b = optString(b, `,"comm":`, ev.Comm)
	b = optString(b, `,"exe":`, ev.Exe)
	b = append(b, `,"decision":`...)
	b = appendString(b, ev.Decision)
	b = optString(b, `,"rule":`, ev.Rule)
	b = optString(b, `,"reason":`, ev.Reason)
	b = optString(b, `,"qname":`, ev.QName)
	b = optString(b, `,"qtype":`, ev.QType)
	b = optString(b, `,"rcode":`, ev.Rcode)
	b = optStrings(b, `,"answers":`, ev.Answers)
	b = optString(b, `,"dst":`, ev.Dst)
	b = optString(b, `,"proto":`, ev.Proto)
	b = optString(b, `,"sni":`, ev.SNI)
	b = optString(b, `,"host":`, ev.Host)
	b = optInt(b, `,"bytes_up":`, ev.BytesUp)
	b = optInt(b, `,"bytes_down":`, ev.BytesDown)
	b = optInt(b, `,"duration_ms":`, ev.DurationMS)
	b = optString(b, `,"method":`, ev.Method)
	b = optString(b, `,"path":`, ev.Path)
	b = optInt(b, `,"status":`, int64(ev.Status))
	b = optStrings(b, `,"injected":`, ev.Injected)
	b = optCounts(b, `,"redacted":`, ev.Redacted)
	if ev.LatencyMS != 0 {
		b = append(b, `,"latency_ms":`...)
		b = appendFloat(b, ev.LatencyMS)
	}
	b = optString(b, `,"ecosystem":`, ev.Ecosystem)
	b = optString(b, `,"package":`, ev.Package)
	b = optString(b, `,"version":`, ev.Version)
	b = optUint(b, `,"dropped":`, ev.Dropped)
	b = optUint(b, `,"sink_errors":`, ev.SinkErrors)
	b = optString(b, `,"sink":`, ev.Sink)
	b = optLabels(b, `,"labels":`, ev.Labels)
	return append(b, "}\n"...), nil
}

// validTime mirrors time.Time.MarshalJSON's limits.
func validTime(t time.Time) bool {
	if y := t.Year(); y < 0 || y > 9999 {
		return false
	}
	_, off := t.Zone()
	return off > -24*3600 && off < 24*3600
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func optString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

func optUint(b []byte, key string, n uint64) []byte {
	if n == 0 {
		return b
	}
	return strconv.AppendUint(append(b, key...), n, 10)
}

func optInt(b []byte, key string, n int64) []byte {
	if n == 0 {
		return b
	}
	return strconv.AppendInt(append(b, key...), n, 10)
}

func optStrings(b []byte, key string, ss []string) []byte {
	if len(ss) == 0 {
		return b
	}
	b = append(b, key...)
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

// optLabels writes a string map with sorted keys, as encoding/json does.
func optLabels(b []byte, key string, m map[string]string) []byte {
	return optMap(b, key, m, appendString)
}

// appendFloat formats like encoding/json's float64 encoder.
func appendFloat(b []byte, f float64) []byte {
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString quotes s like encoding/json with HTML escaping off:
// invalid UTF-8 becomes U+FFFD, U+2028 and U+2029 are escaped.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// optCounts encodes a map of counts with sorted keys, as encoding/json does.
func optCounts(b []byte, key string, m map[string]int) []byte {
	return optMap(b, key, m, func(b []byte, v int) []byte { return strconv.AppendInt(b, int64(v), 10) })
}

// optMap writes key and m as a JSON object with sorted keys (nothing when
// m is empty), each value written by appendV.
func optMap[V any](b []byte, key string, m map[string]V, appendV func([]byte, V) []byte) []byte {
	if len(m) == 0 {
		return b
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, key...)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendV(b, m[k])
	}
	return append(b, '}')
}
