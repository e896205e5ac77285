package main

import (
	"bytes"
	"crypto/tls"
	"net"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// tapConn is the TLS connection of a session with its plaintext traffic
// observed by a recorder. Being a net.Conn, mellium uses it as is.
type tapConn struct {
	net.Conn
	tls *tls.Conn
	rec *recorder
}

func (c *tapConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.rec.bytesIn.Add(int64(n))
		c.rec.reads.Add(1)
		if c.rec.recording() {
			c.rec.in(b[:n], time.Now())
		}
	}
	return n, err
}

func (c *tapConn) Write(b []byte) (int, error) {
	if bytes.HasPrefix(b, []byte("<message")) && bytes.Contains(b, []byte("<payload>")) {
		// An OMEMO message as sent (mellium writes a stanza at once).
		msg := bytes.Clone(b)
		c.rec.lastMsg.Store(&msg)
	}
	c.rec.bytesOut.Add(int64(len(b)))
	c.rec.writes.Add(1)
	if c.rec.recording() {
		c.rec.out(b, time.Now())
	}
	return c.Conn.Write(b)
}

// ConnectionState returns the TLS state (for SASL channel binding).
func (c *tapConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

// iq is one IQ the tapped client sent during a recording and its answer.
type iq struct {
	id, node, item string
	sent, answered time.Time
	depth          int
}

// recorder matches the IQs written between begin and end with their
// answers. Only the stream between begin and end is scanned; stanzas are
// cut at "<iq" and "</iq>" (mellium writes and Prosody answers with these
// spellings), which is enough for PEP get/set IQs.
type recorder struct {
	// bytesIn and bytesOut count the plaintext bytes read and written,
	// reads and writes the calls (recording or not).
	bytesIn, bytesOut, reads, writes atomic.Int64
	// active mirrors on, so that the hot path need not take mu.
	active atomic.Bool
	// lastMsg is the last OMEMO message written (see lastMessage).
	lastMsg atomic.Pointer[[]byte]

	mu     sync.Mutex
	on     bool
	outBuf []byte
	inBuf  []byte
	byID   map[string]*iq
	order  []*iq
}

var (
	reIQStart = regexp.MustCompile(`<iq[\s>][^>]*>`)
	reID      = regexp.MustCompile(`\sid=["']([^"']*)["']`)
	reNode    = regexp.MustCompile(`\snode=["']([^"']*)["']`)
	reItem    = regexp.MustCompile(`<item\s[^>]*id=["']([^"']*)["']`)
)

func (r *recorder) begin() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on, r.outBuf, r.inBuf, r.byID, r.order = true, nil, nil, map[string]*iq{}, nil
	r.active.Store(true)
}

// lastMessage returns the last OMEMO <message> stanza written, nil if none.
func (r *recorder) lastMessage() []byte {
	if b := r.lastMsg.Load(); b != nil {
		return *b
	}
	return nil
}

// recording reports whether begin was called and end not yet.
func (r *recorder) recording() bool { return r.active.Load() }

// end stops recording and returns the IQs in the order they were sent,
// with their depth computed.
func (r *recorder) end() []iq {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = false
	r.active.Store(false)
	out := make([]iq, 0, len(r.order))
	for i, q := range r.order {
		// Depth: one more than the deepest IQ answered before q was sent.
		q.depth = 1
		for _, p := range r.order[:i] {
			if !p.answered.IsZero() && !p.answered.After(q.sent) && p.depth+1 > q.depth {
				q.depth = p.depth + 1
			}
		}
		out = append(out, *q)
	}
	return out
}

func (r *recorder) out(b []byte, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.on {
		return
	}
	r.outBuf = append(r.outBuf, b...)
	for {
		st, body, rest, ok := nextIQ(r.outBuf)
		if !ok {
			r.outBuf = rest
			return
		}
		r.outBuf = rest
		m := reID.FindSubmatch(st)
		if m == nil {
			continue
		}
		q := &iq{id: string(m[1]), sent: at}
		if n := reNode.FindSubmatch(body); n != nil {
			q.node = string(n[1])
		}
		if it := reItem.FindSubmatch(body); it != nil {
			q.item = string(it[1])
		}
		r.byID[q.id] = q
		r.order = append(r.order, q)
	}
}

func (r *recorder) in(b []byte, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.on {
		return
	}
	r.inBuf = append(r.inBuf, b...)
	for {
		st, _, rest, ok := nextIQ(r.inBuf)
		if !ok {
			r.inBuf = rest
			return
		}
		r.inBuf = rest
		if m := reID.FindSubmatch(st); m != nil {
			if q := r.byID[string(m[1])]; q != nil && q.answered.IsZero() {
				q.answered = at
			}
		}
	}
}

// nextIQ finds the first complete IQ stanza in buf: its start tag, its
// whole text and what follows it. Without a complete IQ it returns the part
// of buf that must be kept (from the unfinished "<iq", or a short tail).
func nextIQ(buf []byte) (start, whole, rest []byte, ok bool) {
	loc := reIQStart.FindIndex(buf)
	if loc == nil {
		const keep = 8
		if len(buf) > keep {
			return nil, nil, append([]byte(nil), buf[len(buf)-keep:]...), false
		}
		return nil, nil, buf, false
	}
	st := buf[loc[0]:loc[1]]
	if len(st) >= 2 && st[len(st)-2] == '/' {
		return st, st, buf[loc[1]:], true
	}
	end := indexFrom(buf, loc[1], "</iq>")
	if end < 0 {
		return nil, nil, buf[loc[0]:], false
	}
	return st, buf[loc[0] : end+5], buf[end+5:], true
}

func indexFrom(b []byte, from int, s string) int {
	for i := from; i+len(s) <= len(b); i++ {
		if string(b[i:i+len(s)]) == s {
			return i
		}
	}
	return -1
}

// criticalPath returns the deepest IQ depth and a summary of each depth.
func criticalPath(iqs []iq, start time.Time) (int, map[int]round) {
	rounds := map[int]round{}
	depth := 0
	for _, q := range iqs {
		depth = max(depth, q.depth)
		r := rounds[q.depth]
		if r.n == 0 || q.sent.Sub(start) < r.first {
			r.first = q.sent.Sub(start)
		}
		if !q.answered.IsZero() {
			r.last = max(r.last, q.answered.Sub(start))
		}
		r.n++
		label := q.node
		if q.item != "" {
			label += "#" + q.item
		}
		r.nodes = append(r.nodes, label)
		rounds[q.depth] = r
	}
	for d, r := range rounds {
		sort.Strings(r.nodes)
		rounds[d] = r
	}
	return depth, rounds
}
