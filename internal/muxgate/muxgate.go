// Package muxgate lets a mellium mux message handler do its work once per
// stanza, in time linear in the stanza's size.
//
// mellium's mux (v0.23.0) calls a message handler once for every child
// element that matches one of its patterns, each time with a reader that
// replays the whole stanza from its start. A handler that reads and parses
// the stanza on every call does quadratic work: a 300 KB stanza with 8,000
// matching children froze a session for 20 s. With a Gate, the first call
// reads the stanza once (Read), counting the calls that will follow, and
// each following call returns after reading one token (Repeat).
//
//	tok, _ := r.Token()
//	start, _ := tok.(xml.StartElement)
//	if gate.Repeat(start) {
//		return nil
//	}
//	toks, calls, err := muxgate.Read(start, r, limits, matches)
//	gate.Handled(start, calls-1)
//
// The calls for one stanza follow each other in the goroutine of Serve, so
// the remaining calls always come before the next stanza's; the start
// element is compared as well, so that a miscount can only ever skip a
// stanza that begins exactly like the one handled.
package muxgate

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
)

// Gate remembers the stanza the last first call handled and how many calls
// for it are still to come. The zero Gate is ready; it is safe for
// concurrent use (a mux may serve several sessions).
type Gate struct {
	mu      sync.Mutex
	start   xml.StartElement
	pending int
}

// Repeat reports whether a call for the stanza that begins with start is
// one of the remaining calls for the stanza already handled, and counts it.
func (g *Gate) Repeat(start xml.StartElement) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pending > 0 && sameStart(g.start, start) {
		g.pending--
		return true
	}
	g.pending = 0
	return false
}

// Handled records that the stanza beginning with start was handled whole
// and that the mux will call the handler more times for it.
func (g *Gate) Handled(start xml.StartElement, more int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.start = start.Copy()
	g.pending = max(more, 0)
}

func sameStart(a, b xml.StartElement) bool {
	return a.Name == b.Name && slices.Equal(a.Attr, b.Attr)
}

// Limits bound what Read copies of a stanza.
type Limits struct {
	// Tokens is the largest number of tokens copied.
	Tokens int
	// Bytes bounds the names, attribute values and text copied.
	Bytes int
	// Shared makes Read return the tokens as r yields them instead of
	// copies. mellium's mux hands every message handler tokens it copied
	// and keeps for the stanza's other handlers: a caller that only reads
	// them, and keeps nothing of them (no CharData, no attribute slice)
	// once it returned to the mux, needs no copy of its own.
	Shared bool
}

// Errors of Read.
var (
	// ErrTooLarge reports a stanza beyond the Limits.
	ErrTooLarge = errors.New("stanza too large")
	// ErrMalformed reports a stanza that is not well-formed XML.
	ErrMalformed = errors.New("malformed stanza")
)

// Read reads the rest of the stanza whose start element was just read
// from r, up to and including its end element, and returns copies of all
// its tokens (start first) together with the number of top-level children
// for which match is true: the number of calls the mux makes for the
// stanza when match tells the handler's patterns.
//
// A stanza beyond lim is still read to its end (the mux buffers it anyway)
// so that the count is exact, but nothing more is copied and an error
// matching ErrTooLarge is returned with the count. Malformed XML yields an
// error matching ErrMalformed; the count is then what was read (the mux
// stops at the same error).
func Read(start xml.StartElement, r xml.TokenReader, lim Limits, match func(xml.Name) bool) (toks []xml.Token, matched int, err error) {
	toks = make([]xml.Token, 1, 32)
	toks[0] = start
	if !lim.Shared {
		toks[0] = start.Copy()
	}
	size := len(start.Name.Local) + len(start.Name.Space)
	for _, a := range start.Attr {
		size += len(a.Name.Local) + len(a.Name.Space) + len(a.Value)
	}
	var tooLarge error
	depth := 1
	for depth > 0 {
		tok, rerr := r.Token()
		if tok != nil {
			switch t := tok.(type) {
			case xml.StartElement:
				if depth == 1 && match(t.Name) {
					matched++
				}
				depth++
				size += len(t.Name.Local) + len(t.Name.Space)
				for _, a := range t.Attr {
					size += len(a.Name.Local) + len(a.Name.Space) + len(a.Value)
				}
			case xml.EndElement:
				depth--
			case xml.CharData:
				size += len(t)
			}
			if tooLarge == nil && (len(toks) >= lim.Tokens || size > lim.Bytes) {
				tooLarge = fmt.Errorf("%w: more than %d tokens or %d bytes", ErrTooLarge, lim.Tokens, lim.Bytes)
				toks = nil
			}
			if tooLarge == nil {
				if !lim.Shared {
					tok = xml.CopyToken(tok)
				}
				toks = append(toks, tok)
			}
		}
		if depth == 0 {
			break
		}
		if rerr == io.EOF || rerr == nil && tok == nil {
			return nil, matched, fmt.Errorf("%w: stanza ends early", ErrMalformed)
		}
		if rerr != nil {
			return nil, matched, fmt.Errorf("%w: %w", ErrMalformed, rerr)
		}
	}
	if tooLarge != nil {
		return nil, matched, tooLarge
	}
	return toks, matched, nil
}
