//go:build !linux

package dnsproxy

import "net"

// maxBatch: one datagram per system call where recvmmsg and sendmmsg do
// not exist.
const maxBatch = 1

type batchConn struct{ uc *net.UDPConn }

func newBatchConn(uc *net.UDPConn) (*batchConn, error) { return &batchConn{uc: uc}, nil }

func (c *batchConn) grow(int) {}

func (c *batchConn) wait() error { return nil }

func (c *batchConn) read(b *udpBatch) (int, error) {
	n, ap, err := c.uc.ReadFromUDPAddrPort(b.bufs[0])
	if err != nil {
		return 0, err
	}
	b.n[0], b.peers[0] = n, ap
	return 1, nil
}

func (c *batchConn) write(b *udpBatch, alone func(i int)) {
	for _, i := range b.hits {
		alone(i)
	}
}
