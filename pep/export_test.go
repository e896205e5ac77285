package pep

import (
	"bytes"
	"context"
	"encoding/xml"

	"mellium.im/xmpp"
)

// Reencode parses a serialised payload on its own and serialises it again.
func Reencode(payload []byte) ([]byte, error) {
	toks, err := readTokens(xml.NewDecoder(bytes.NewReader(payload)))
	if err != nil {
		return nil, err
	}
	root, err := buildTree(toks)
	if err != nil {
		return nil, err
	}
	return marshal(root.toks)
}

// PublishOnce publishes without any recovery, for tests of the raw errors.
func PublishOnce(ctx context.Context, s *xmpp.Session, node, itemID string, payload []xml.Token, opts PublishOptions) error {
	return publishOnce(ctx, s, node, itemID, payload, opts, opts.MaxItems)
}
