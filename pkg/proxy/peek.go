package proxy

import (
	"bytes"
	"errors"
)

// Limits of the connection peek. A ClientHello (even a post-quantum one with
// a large key share) is far below maxHelloLen; maxPeekLen bounds what the
// proxy buffers before it decides, whatever the client sends.
const (
	maxHelloLen   = 1 << 15 // handshake message body
	maxPeekLen    = 1<<15 + 512
	maxHTTPHeadLn = 1 << 14 // plain HTTP request head searched for Host
)

var (
	errNeedMore    = errors.New("need more data")
	errNotHello    = errors.New("not a TLS ClientHello")
	errBadHello    = errors.New("malformed TLS ClientHello")
	errHelloTooBig = errors.New("TLS ClientHello too large")
	errBadSNI      = errors.New("invalid server name in ClientHello")
	errNotHTTP     = errors.New("not an HTTP/1 request")
	errBadHost     = errors.New("invalid Host in HTTP request")
)

// parseClientHello extracts the server_name of a TLS ClientHello from the
// bytes a client sent first. data may hold several TLS records (a fragmented
// handshake); it returns errNeedMore while the ClientHello is incomplete. The
// returned sni aliases data (no allocation); it is lower case-insensitive
// checked for host-name characters and is empty when the client sent none.
// alpnH2 reports whether the client offered "h2".
func parseClientHello(data []byte) (sni []byte, alpnH2 bool, err error) {
	// Reassemble the handshake layer from the record layer without copying
	// when the message sits in one record (the common case).
	var msg []byte
	var scratch []byte
	off := 0
	for {
		if len(data)-off < 5 {
			if off == 0 && len(data) > 0 && data[0] != 0x16 {
				return nil, false, errNotHello
			}
			return nil, false, errNeedMore
		}
		if data[off] != 0x16 { // handshake
			return nil, false, errNotHello
		}
		if data[off+1] != 3 {
			return nil, false, errNotHello
		}
		n := int(data[off+3])<<8 | int(data[off+4])
		if n == 0 || n > 1<<14+2048 {
			return nil, false, errBadHello
		}
		if len(data)-off-5 < n {
			return nil, false, errNeedMore
		}
		frag := data[off+5 : off+5+n]
		off += 5 + n
		if msg == nil && scratch == nil {
			msg = frag
		} else {
			if scratch == nil {
				scratch = append(make([]byte, 0, len(msg)+len(frag)), msg...)
			}
			scratch = append(scratch, frag...)
			msg = scratch
		}
		if len(msg) < 4 {
			continue
		}
		if msg[0] != 1 { // client_hello
			return nil, false, errNotHello
		}
		hl := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if hl > maxHelloLen {
			return nil, false, errHelloTooBig
		}
		if len(msg)-4 >= hl {
			return parseHelloBody(msg[4 : 4+hl])
		}
		if len(scratch) > maxPeekLen {
			return nil, false, errHelloTooBig
		}
	}
}

func parseHelloBody(b []byte) (sni []byte, alpnH2 bool, err error) {
	// legacy_version(2) random(32)
	if len(b) < 34 {
		return nil, false, errBadHello
	}
	b = b[34:]
	// legacy_session_id<0..32>
	b, ok := skipVec(b, 1)
	if !ok {
		return nil, false, errBadHello
	}
	// cipher_suites<2..2^16-2>
	if b, ok = skipVec(b, 2); !ok {
		return nil, false, errBadHello
	}
	// legacy_compression_methods<1..2^8-1>
	if b, ok = skipVec(b, 1); !ok {
		return nil, false, errBadHello
	}
	if len(b) == 0 {
		return nil, false, nil // no extensions (SSLv3-style hello)
	}
	if len(b) < 2 {
		return nil, false, errBadHello
	}
	el := int(b[0])<<8 | int(b[1])
	b = b[2:]
	if len(b) < el {
		return nil, false, errBadHello
	}
	b = b[:el]
	seenSNI := false
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, false, errBadHello
		}
		typ := int(b[0])<<8 | int(b[1])
		l := int(b[2])<<8 | int(b[3])
		b = b[4:]
		if len(b) < l {
			return nil, false, errBadHello
		}
		ext := b[:l]
		b = b[l:]
		switch typ {
		case 0: // server_name
			if seenSNI {
				return nil, false, errBadHello
			}
			seenSNI = true
			if sni, err = parseSNIExt(ext); err != nil {
				return nil, false, err
			}
		case 16: // application_layer_protocol_negotiation
			if len(ext) < 2 {
				return nil, false, errBadHello
			}
			list := ext[2:]
			if int(ext[0])<<8|int(ext[1]) != len(list) {
				return nil, false, errBadHello
			}
			for len(list) > 0 {
				pl := int(list[0])
				if pl == 0 || len(list) < 1+pl {
					return nil, false, errBadHello
				}
				if pl == 2 && list[1] == 'h' && list[2] == '2' {
					alpnH2 = true
				}
				list = list[1+pl:]
			}
		}
	}
	return sni, alpnH2, nil
}

func parseSNIExt(ext []byte) ([]byte, error) {
	if len(ext) < 2 {
		return nil, errBadHello
	}
	list := ext[2:]
	if int(ext[0])<<8|int(ext[1]) != len(list) {
		return nil, errBadHello
	}
	var name []byte
	for len(list) > 0 {
		if len(list) < 3 {
			return nil, errBadHello
		}
		typ := list[0]
		l := int(list[1])<<8 | int(list[2])
		list = list[3:]
		if len(list) < l {
			return nil, errBadHello
		}
		if typ == 0 { // host_name
			if name != nil {
				return nil, errBadSNI // two host names: refuse, never pick one
			}
			name = list[:l]
			if !validHostBytes(name) {
				return nil, errBadSNI
			}
		}
		list = list[l:]
	}
	return name, nil
}

// validHostBytes accepts a DNS name (letters, digits, '-', '_', dots, an
// optional trailing dot) of at most 253 bytes with non-empty labels of at
// most 63 bytes. Anything else (NUL, spaces, '%', ':', IP literals) fails:
// a parser differential between sluice and the upstream starts there.
func validHostBytes(b []byte) bool {
	if len(b) > 0 && b[len(b)-1] == '.' {
		b = b[:len(b)-1]
	}
	if len(b) == 0 || len(b) > 253 {
		return false
	}
	label := 0
	for _, c := range b {
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}

func skipVec(b []byte, lenBytes int) ([]byte, bool) {
	if len(b) < lenBytes {
		return nil, false
	}
	n := 0
	for i := 0; i < lenBytes; i++ {
		n = n<<8 | int(b[i])
	}
	b = b[lenBytes:]
	if len(b) < n {
		return nil, false
	}
	return b[n:], true
}

// httpHead is what the peek learns from a plain HTTP/1 request.
type httpHead struct {
	method, target string
	host           string // from the Host header or an absolute-form target, port stripped
}

// parseHTTPHead reads the request line and the Host header of a plain
// HTTP/1.x request head in data. It returns errNeedMore until the head is
// complete (or maxHTTPHeadLn bytes were seen), errNotHTTP when data cannot be
// an HTTP/1 request, and errBadHost for a Host that is not a plain host name
// or IP literal (with optional port) or when Host headers disagree.
func parseHTTPHead(data []byte) (httpHead, error) {
	var h httpHead
	// Method token: upper-case letters, then a space.
	i := 0
	for i < len(data) && i < 16 && data[i] >= 'A' && data[i] <= 'Z' {
		i++
	}
	if i == len(data) {
		return h, errNeedMore
	}
	if i == 0 || i == 16 || data[i] != ' ' {
		return h, errNotHTTP
	}
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		if bytes.Contains(data, []byte("\n\n")) {
			end = bytes.Index(data, []byte("\n\n"))
		} else if len(data) < maxHTTPHeadLn {
			return h, errNeedMore
		} else {
			return h, errNotHTTP
		}
	}
	head := data[:end]
	line, rest, _ := bytes.Cut(head, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	parts := bytes.Split(line, []byte(" "))
	if len(parts) != 3 || !bytes.HasPrefix(parts[2], []byte("HTTP/1.")) {
		return h, errNotHTTP
	}
	h.method = string(parts[0])
	h.target = string(parts[1])
	var host []byte
	if t := parts[1]; len(t) > 0 && t[0] != '/' && t[0] != '*' {
		// absolute-form (or authority-form for CONNECT)
		a := t
		if k := bytes.Index(a, []byte("://")); k >= 0 {
			a = a[k+3:]
		}
		if k := bytes.IndexAny(a, "/?#"); k >= 0 {
			a = a[:k]
		}
		if bytes.IndexByte(a, '@') >= 0 {
			return h, errBadHost
		}
		host = a
	}
	var hdrHost []byte
	seen := false
	for len(rest) > 0 {
		var l []byte
		l, rest, _ = bytes.Cut(rest, []byte("\n"))
		l = bytes.TrimSuffix(l, []byte("\r"))
		k := bytes.IndexByte(l, ':')
		if k < 0 {
			continue
		}
		if !bytes.EqualFold(l[:k], []byte("host")) {
			continue
		}
		v := bytes.TrimSpace(l[k+1:])
		if seen && !bytes.Equal(v, hdrHost) {
			return h, errBadHost
		}
		seen, hdrHost = true, v
	}
	if len(host) == 0 {
		// No target authority ("/x", or an absolute-form target with an
		// empty one, "a:///x"): net/http takes the Host header then, and
		// so does the peek (found by FuzzHostDifferential).
		host = hdrHost
	}
	if len(host) == 0 {
		return h, nil
	}
	hn, ok := hostOnly(string(host))
	if !ok {
		return h, errBadHost
	}
	h.host = hn
	return h, nil
}
