package proxy

import (
	"errors"
	"io"
)

// WebSocket frames from the upstream (RFC 6455 section 5) are parsed as
// they stream and their payloads redacted with same-length masks, so every
// frame header passes unchanged. The payloads of the frames of one data
// message (a first frame and its continuations) are scanned as one stream:
// a secret split across fragments is caught. Bytes that may begin a secret
// at the end of a fragment are held until the next fragment decides them;
// frame headers and control frames that arrive meanwhile wait behind them
// (bounded by maxWSQueued). Masked frames are unmasked to be scanned and
// masked again with their key. A frame with a reserved bit set
// (permessage-deflate) cannot be scanned: the connection is ended.

// maxWSQueued bounds the frame headers and control frames waiting behind
// undecided payload bytes; past it those bytes are masked outright.
const maxWSQueued = 64 << 10

var errWSReserved = errors.New("websocket frame with reserved bits set (a compressed frame sluice cannot redact)")
var errWSProtocol = errors.New("malformed websocket frame from the upstream")

type wsFilter struct {
	src   io.Reader
	ps    *patternSet
	onHit func()
	hit   bool
	err   error
	rbuf  []byte
	out   []byte
	off   int

	// The frame being read.
	hdr     []byte // header bytes read so far
	need    int    // header length, once the first two bytes are in
	inFrame bool   // the header is complete; payload follows
	left    int64  // payload bytes left
	fin     bool
	control bool
	masked  bool
	key     [4]byte
	keyOff  int    // mask offset of the next payload byte
	ctl     []byte // a control frame being collected (header + payload)
	ctlHdr  int    // its header length
	frame   int    // sequence number of the frame

	held    []byte   // undecided payload bytes of the current data message (unmasked)
	q       []wsItem // what waits for them, in wire order
	queued  int      // wire bytes in q
	scratch []byte
	plain   []byte
}

// wsItem is either wire bytes to pass as they are, or n payload bytes of
// frame (taken from the front of held when decided).
type wsItem struct {
	wire   []byte
	n      int
	frame  int
	masked bool
	key    [4]byte
	keyOff int
}

func newWSFilter(src io.Reader, ps *patternSet, onHit func()) *wsFilter {
	return &wsFilter{src: src, ps: ps, onHit: onHit}
}

func (f *wsFilter) Read(p []byte) (int, error) {
	for f.off == len(f.out) {
		if f.err != nil {
			return 0, f.err
		}
		f.out, f.off = f.out[:0], 0
		if f.rbuf == nil {
			f.rbuf = make([]byte, 32<<10)
		}
		n, err := f.src.Read(f.rbuf)
		if n > 0 {
			if perr := f.process(f.rbuf[:n]); perr != nil {
				err = perr
			}
		}
		if err != nil {
			if err == io.EOF {
				// The stream ended mid-message: decide what is held.
				f.decide(true)
				f.flushWire()
			}
			f.err = err
		}
	}
	n := copy(p, f.out[f.off:])
	f.off += n
	return n, nil
}

// process parses the frames in b.
func (f *wsFilter) process(b []byte) error {
	for len(b) > 0 {
		if !f.inFrame {
			n, err := f.header(b)
			if err != nil {
				return err
			}
			b = b[n:]
			continue
		}
		n := int(min(f.left, int64(len(b))))
		if f.control {
			f.ctl = append(f.ctl, b[:n]...)
			f.left -= int64(n)
			if f.left == 0 {
				f.endControl()
			}
		} else {
			f.payload(b[:n])
		}
		b = b[n:]
	}
	return nil
}

// header consumes header bytes from b; when the header is complete it
// starts the frame.
func (f *wsFilter) header(b []byte) (int, error) {
	used := 0
	for len(b) > used && (f.need == 0 || len(f.hdr) < f.need) {
		f.hdr = append(f.hdr, b[used])
		used++
		if len(f.hdr) == 2 {
			f.need = 2
			switch f.hdr[1] & 0x7f {
			case 126:
				f.need += 2
			case 127:
				f.need += 8
			}
			if f.hdr[1]&0x80 != 0 {
				f.need += 4
			}
		}
	}
	if f.need == 0 || len(f.hdr) < f.need {
		return used, nil
	}
	h := f.hdr
	if h[0]&0x70 != 0 {
		return used, errWSReserved
	}
	f.fin = h[0]&0x80 != 0
	op := h[0] & 0x0f
	f.control = op&0x08 != 0
	f.masked = h[1]&0x80 != 0
	length := int64(h[1] & 0x7f)
	i := 2
	switch length {
	case 126:
		length = int64(h[2])<<8 | int64(h[3])
		i = 4
	case 127:
		length = 0
		for _, c := range h[2:10] {
			length = length<<8 | int64(c)
		}
		if length < 0 {
			return used, errWSProtocol
		}
		i = 10
	}
	if f.masked {
		copy(f.key[:], h[i:i+4])
	}
	if f.control && (length > 125 || !f.fin) || !f.control && op > 2 {
		return used, errWSProtocol
	}
	f.frame++
	f.left, f.keyOff, f.inFrame = length, 0, true
	if f.control {
		f.ctl, f.ctlHdr = append(f.ctl[:0], h...), len(h)
	} else {
		if op != 0 && len(f.held) > 0 {
			// A new message while the last one was unfinished (a protocol
			// error the client will see): decide the old one first.
			f.decide(true)
		}
		f.wire(h)
	}
	f.hdr, f.need = f.hdr[:0], 0
	if length == 0 {
		if f.control {
			f.endControl()
		} else {
			f.payload(nil)
		}
	}
	return used, nil
}

// wire passes frame bytes on, after any undecided payload before them.
func (f *wsFilter) wire(b []byte) {
	if len(f.q) == 0 {
		f.out = append(f.out, b...)
		return
	}
	f.q = append(f.q, wsItem{wire: append([]byte(nil), b...)})
	f.queued += len(b)
	if f.queued > maxWSQueued {
		f.decide(true)
		f.flushWire()
	}
}

// endControl passes a complete control frame with its payload redacted
// (control frames are never fragmented).
func (f *wsFilter) endControl() {
	f.inFrame = false
	hl := f.ctlHdr
	payload := f.ctl[hl:]
	f.plain = xorMask(f.plain[:0], payload, f.masked, f.key, 0)
	red, _, hit := f.ps.redact(f.scratch[:0], f.plain, true, true)
	f.scratch = red
	if hit {
		f.noteHit()
		f.ctl = xorMask(f.ctl[:hl], red, f.masked, f.key, 0)
	}
	f.wire(f.ctl)
}

// payload takes payload bytes of the current data frame.
func (f *wsFilter) payload(b []byte) {
	f.left -= int64(len(b))
	if len(b) > 0 {
		if k := len(f.q); k > 0 && f.q[k-1].wire == nil && f.q[k-1].frame == f.frame {
			f.q[k-1].n += len(b)
		} else {
			f.q = append(f.q, wsItem{n: len(b), frame: f.frame, masked: f.masked, key: f.key, keyOff: f.keyOff})
		}
		f.held = xorMask(f.held, b, f.masked, f.key, f.keyOff)
		f.keyOff += len(b)
	}
	end := f.left == 0
	if end {
		f.inFrame = false
	}
	f.decide(end && f.fin)
}

// decide redacts what can be decided of the held payload and passes it on,
// with the frame bytes queued behind it.
func (f *wsFilter) decide(final bool) {
	if len(f.held) > 0 {
		red, k, hit := f.ps.redact(f.scratch[:0], f.held, final, true)
		f.scratch = red
		if hit {
			f.noteHit()
		}
		f.emit(red[:k])
		f.held = append(f.held[:0], f.held[k:]...)
	}
	f.flushWire()
}

// emit passes decided payload bytes to the frames they belong to.
func (f *wsFilter) emit(d []byte) {
	for len(d) > 0 && len(f.q) > 0 {
		it := &f.q[0]
		if it.wire != nil {
			f.out = append(f.out, it.wire...)
			f.queued -= len(it.wire)
			f.q = f.q[1:]
			continue
		}
		m := min(it.n, len(d))
		f.out = xorMask(f.out, d[:m], it.masked, it.key, it.keyOff)
		d = d[m:]
		it.n -= m
		it.keyOff += m
		if it.n == 0 {
			f.q = f.q[1:]
		}
	}
	if len(f.q) == 0 {
		f.q = f.q[:0:0]
	}
}

// flushWire passes the frame bytes at the front of the queue.
func (f *wsFilter) flushWire() {
	if len(f.held) == 0 {
		for _, it := range f.q {
			f.out = append(f.out, it.wire...)
		}
		f.q, f.queued = f.q[:0], 0
		return
	}
	for len(f.q) > 0 && f.q[0].wire != nil {
		f.out = append(f.out, f.q[0].wire...)
		f.queued -= len(f.q[0].wire)
		f.q = f.q[1:]
	}
	if f.queued > maxWSQueued {
		// Too much waits behind a possible secret: mask it outright.
		f.emit(appendMask(f.scratch[:0], len(f.held)))
		f.held = f.held[:0]
		f.flushWire()
	}
}

func (f *wsFilter) noteHit() {
	if !f.hit {
		f.hit = true
		if f.onHit != nil {
			f.onHit()
		}
	}
}

// xorMask appends b to dst, masked (or unmasked) with key from offset off.
func xorMask(dst, b []byte, masked bool, key [4]byte, off int) []byte {
	if !masked {
		return append(dst, b...)
	}
	for i, c := range b {
		dst = append(dst, c^key[(off+i)&3])
	}
	return dst
}
