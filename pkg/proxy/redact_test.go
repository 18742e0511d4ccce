package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// TestRedactEncodings: each secret, on its own and inside longer text, in
// each listed encoding, is redacted, including base64 of a longer stream at
// each of the three alignments and \uXXXX beyond the BMP.
func TestRedactEncodings(t *testing.T) {
	secrets := []string{
		`s3cr3t/tok+en"v&l<ue>~x`,
		"pässwörd-ключ-🔑-0123",
		"ghp_0123456789abcdefABCDEF0123456789abcd",
		"abcd",
	}
	for _, secret := range secrets {
		r := newRedactor([]string{secret, "Bearer " + secret})
		var forms []string
		for _, v := range []string{secret, "Bearer " + secret} {
			for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
				forms = append(forms, enc.EncodeToString([]byte(v)))
				for _, prefix := range []string{"", "A", "AB", "ABC"} {
					for _, suffix := range []string{"", "Z", "YZ"} {
						forms = append(forms, enc.EncodeToString([]byte(prefix+"Authorization: "+v+suffix)))
					}
				}
			}
			h := hex.EncodeToString([]byte(v))
			forms = append(forms, h, strings.ToUpper(h), url.QueryEscape(v), url.PathEscape(v),
				strings.ReplaceAll(url.QueryEscape(v), "+", "%20"))
			j, _ := json.Marshal(v)
			forms = append(forms, string(j), strings.ReplaceAll(string(j), "/", `\/`))
			var ju, jU strings.Builder
			for _, u := range utf16Units(v) {
				fmt.Fprintf(&ju, `\u%04x`, u)
				fmt.Fprintf(&jU, `\u%04X`, u)
			}
			forms = append(forms, ju.String(), jU.String())
		}
		for i, f := range forms {
			for _, in := range []string{f, "before " + f + " after", "x" + f + f + "y"} {
				out, _ := r.replace(nil, []byte(in))
				if how := reveals(string(out), secret); how != "" {
					t.Errorf("%q form %d: %q (%s) redacted to %q", secret, i, in, how, out)
				}
			}
		}
	}
	// Ordinary text is left alone.
	r := newRedactor([]string{"s3cr3t-token-value"})
	in := "the quick brown fox " + base64.StdEncoding.EncodeToString([]byte("unrelated")) + " 0123456789abcdef"
	if out, hit := r.replace(nil, []byte(in)); hit || string(out) != in {
		t.Fatalf("unrelated text changed: %q", out)
	}
}

func utf16Units(s string) []uint16 {
	var out []uint16
	for _, r := range s {
		if r > 0xffff {
			r -= 0x10000
			out = append(out, uint16(0xd800+r>>10), uint16(0xdc00+r&0x3ff))
			continue
		}
		out = append(out, uint16(r))
	}
	return out
}

// fuzzSecret maps b to a secret of 4 to 40 characters from [A-Z0-9]: none
// of them occurs in Redacted or in a mask, so any occurrence left in an
// output is a miss.
func fuzzSecret(b []byte) string {
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	var sb strings.Builder
	for _, c := range b {
		if sb.Len() == 40 {
			break
		}
		sb.WriteByte(alpha[int(c)%len(alpha)])
	}
	for sb.Len() < 4 {
		sb.WriteByte('Q')
	}
	return sb.String()
}

// FuzzRedactStream: the streaming redactor, fed in arbitrary pieces, gives
// what one pass over the whole input gives, and leaves no secret (raw or
// upper-case hex: alphabets disjoint from the replacement) in it; WebSocket
// frames carrying the same data, fragmented and interleaved with a ping,
// keep their headers and lengths and carry the same redaction.
func FuzzRedactStream(f *testing.F) {
	f.Add([]byte("tok123"), []byte("xxTOK123yy"), []byte{3, 1, 7})
	f.Add([]byte("secret"), []byte("Bearer SECRET and U0VDUkVU and 534543524554 end SEC"), []byte{1, 1, 1, 1, 50})
	f.Add([]byte("abcdefgh"), []byte(base64.StdEncoding.EncodeToString([]byte("Authorization: Bearer ABCDEFGH"))), []byte{9, 2})
	f.Add([]byte("zz"), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, sb, data, splits []byte) {
		secret := fuzzSecret(sb)
		// Sprinkle the secret and its encodings into the data.
		var in []byte
		for i, c := range data {
			in = append(in, c)
			switch c % 29 {
			case 0:
				in = append(in, secret...)
			case 1:
				in = append(in, base64.StdEncoding.EncodeToString([]byte(string(data[:i%3])+"Bearer "+secret))...)
			case 2:
				in = append(in, strings.ToUpper(hex.EncodeToString([]byte(secret)))...)
			case 3:
				in = append(in, secret[:len(secret)/2]...)
			}
		}
		r := newRedactor([]string{secret, "Bearer " + secret})
		want, _ := r.replace(nil, in)
		if ref := naiveRedact(r.ps.pats, in); !bytes.Equal(want, ref) {
			t.Fatalf("scanner differs from the naive one on %q:\n got %q\nwant %q", in, want, ref)
		}
		if bytes.Contains(want, []byte(secret)) || bytes.Contains(want, []byte(strings.ToUpper(hex.EncodeToString([]byte(secret))))) {
			t.Fatalf("secret %q left in %q", secret, want)
		}
		var chunks []string
		rest := string(in)
		for _, s := range splits {
			if rest == "" {
				break
			}
			n := min(1+int(s), len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		if rest != "" {
			chunks = append(chunks, rest)
		}
		got, err := io.ReadAll(r.reader(io.NopCloser(&chunkReader{chunks: slices.Clone(chunks)}), nil))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("streamed in %q:\n got %q\nwant %q", chunks, got, want)
		}

		// The same data as a binary message in fragments (cut at the
		// chunk boundaries), a masked ping after the first fragment.
		fixed, _, _ := r.ps.redact(nil, in, true, true)
		if len(fixed) != len(in) {
			t.Fatalf("same-length redaction changed the length: %d → %d", len(in), len(fixed))
		}
		var wire []byte
		var mask []byte // data frames masked too when the first split is odd
		if len(splits) > 0 && splits[0]%2 == 1 {
			mask = []byte{splits[0], 0x5a, 0xa5, 0x33}
		}
		for i, c := range chunks {
			op := byte(0)
			if i == 0 {
				op = 2
			}
			wire = appendWSFrame(wire, i == len(chunks)-1, op, mask, []byte(c))
			if i == 0 {
				wire = appendWSFrame(wire, true, 9, []byte{9, 8, 7, 6}, []byte("ping "+secret))
			}
		}
		var pieces []string
		for w := string(wire); w != ""; {
			n := min(1+len(pieces)*7%13, len(w))
			pieces = append(pieces, w[:n])
			w = w[n:]
		}
		out, err := io.ReadAll(newWSFilter(&chunkReader{chunks: pieces}, r.ps, nil))
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != len(wire) {
			t.Fatalf("frames changed length: %d → %d", len(wire), len(out))
		}
		var msg []byte
		for o := 0; o < len(out); {
			hl, n, op, p := parseWSFrame(out[o:])
			if !bytes.Equal(out[o:o+hl], wire[o:o+hl]) {
				t.Fatalf("frame header at %d changed", o)
			}
			if op == 9 {
				if bytes.Contains(p, []byte(secret)) {
					t.Fatalf("ping carries the secret: %q", p)
				}
			} else {
				msg = append(msg, p...)
			}
			o += hl + n
		}
		if !bytes.Equal(msg, fixed) {
			t.Fatalf("message payload\n got %q\nwant %q", msg, fixed)
		}
	})
}

func appendWSFrame(b []byte, fin bool, op byte, mask []byte, p []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	switch n := len(p); {
	case n < 126:
		b = append(b, b0, byte(n))
	case n < 1<<16:
		b = binary.BigEndian.AppendUint16(append(b, b0, 126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, b0, 127), uint64(n))
	}
	if mask != nil {
		b[len(b)-1-lenExt(len(p))] |= 0x80
		b = append(b, mask...)
		for i, c := range p {
			b = append(b, c^mask[i%4])
		}
		return b
	}
	return append(b, p...)
}

func lenExt(n int) int {
	switch {
	case n < 126:
		return 0
	case n < 1<<16:
		return 2
	}
	return 8
}

// parseWSFrame returns a frame's header length, payload length, opcode and
// unmasked payload.
func parseWSFrame(b []byte) (hl, n int, op byte, p []byte) {
	op = b[0] & 0x0f
	n, hl = int(b[1]&0x7f), 2
	switch n {
	case 126:
		n, hl = int(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		n, hl = int(binary.BigEndian.Uint64(b[2:])), 10
	}
	var mask []byte
	if b[1]&0x80 != 0 {
		mask = b[hl : hl+4]
		hl += 4
	}
	p = append([]byte(nil), b[hl:hl+n]...)
	for i := range p {
		if mask != nil {
			p[i] ^= mask[i%4]
		}
	}
	return hl, n, op, p
}

// naiveRedact is the reference: at each position, the longest pattern
// there (pats are sorted longest first).
func naiveRedact(pats []string, in []byte) []byte {
	var out []byte
	for i := 0; i < len(in); {
		hit := false
		for _, p := range pats {
			if bytes.HasPrefix(in[i:], []byte(p)) {
				out = append(out, Redacted...)
				i += len(p)
				hit = true
				break
			}
		}
		if !hit {
			out = append(out, in[i])
			i++
		}
	}
	return out
}

// BenchmarkRedact is the scan of bodies that carry no secret: text and
// random bytes.
func BenchmarkRedact(b *testing.B) {
	r := newRedactor([]string{echoSecret, "Bearer " + echoSecret})
	text := []byte(strings.Repeat(echoPayload("Bearer not-the-secret-at-all")+"The quick brown fox jumps over the lazy dog. ", 1000))[:1<<20]
	rnd := make([]byte, 1<<20)
	for i := range rnd {
		rnd[i] = byte(i*2654435761>>13) ^ byte(i>>7)
	}
	for _, in := range []struct {
		name string
		b    []byte
	}{{"text", text}, {"binary", rnd}} {
		b.Run(in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.b)))
			var out []byte
			for b.Loop() {
				out, _, _ = r.ps.redact(out[:0], in.b, false, false)
			}
		})
	}
}

// TestFilterUpgradeExtension: a WebSocket the upstream switched to with a
// negotiated extension (whose frames could not be redacted) is refused.
func TestFilterUpgradeExtension(t *testing.T) {
	rec := &recorder{}
	rs := &reqState{ci: &connInfo{s: &server{sb: &Sandbox{Name: "sb", Audit: rec}}}}
	if !rs.red.init([]string{echoSecret}) {
		t.Fatal("no redactor")
	}
	rs.secrets = &rs.red
	resp := &http.Response{StatusCode: http.StatusSwitchingProtocols, Header: http.Header{"Upgrade": {"websocket"}}, Body: http.NoBody}
	if err := filterResponse(rs, resp, http.MethodGet); err != nil {
		t.Fatal(err)
	}
	resp.Header.Set("Sec-WebSocket-Extensions", "permessage-deflate")
	if err := filterResponse(rs, resp, http.MethodGet); err == nil {
		t.Fatal("an upgrade with permessage-deflate was not refused")
	}
}
