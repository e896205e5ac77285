package main

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// rtProxy is a TCP proxy in front of a PostgreSQL server that counts round
// trips: the ReadyForQuery messages the server sends, one at the end of
// every simple query and of every extended-protocol Sync (a statement, or
// a pipelined batch). The connection's start-up ends with one too.
type rtProxy struct {
	ln     net.Listener
	target string
	trips  atomic.Int64
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

// newRTProxy listens on a free port of 127.0.0.1 and forwards to target.
func newRTProxy(target string) (*rtProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &rtProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *rtProxy) addr() string { return p.ln.Addr().String() }

func (p *rtProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			io.Copy(s, c)
			s.(*net.TCPConn).CloseWrite()
		}()
		go func() {
			defer p.wg.Done()
			p.countCopy(c, s)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}

// countCopy forwards the server's messages (type byte, 4-byte length
// including itself, body) and counts the ReadyForQuery ('Z') ones.
func (p *rtProxy) countCopy(dst io.Writer, src io.Reader) {
	r := bufio.NewReaderSize(src, 64<<10)
	w := bufio.NewWriterSize(dst, 64<<10)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int64(binary.BigEndian.Uint32(hdr[1:])) - 4
		if hdr[0] == 'Z' {
			p.trips.Add(1)
		}
		if _, err := w.Write(hdr[:]); err != nil {
			return
		}
		if _, err := io.CopyN(w, r, n); err != nil {
			return
		}
		// Flush when no more input is waiting, so that nothing is held
		// back.
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

func (p *rtProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
