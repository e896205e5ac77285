package omemo

import (
	"context"
	"fmt"
	"io"

	"mellium.im/omemo/media"
	"mellium.im/xmpp/jid"
)

// SendFile shares a file end-to-end encrypted, as OMEMO clients do
// (XEP-0454): media.Upload encrypts it with a fresh key while it uploads it
// to the own server's HTTP File Upload service, then the aesgcm:// link
// (the URL and the key) is sent in an OMEMO message to `to`, as Send sends
// a body, and the key is wiped. size is the number of bytes r yields; name
// is the file name the recipients see. The link never leaves the process
// except inside the encrypted message.
//
// The upload comes first: if the message then cannot be sent (Send fails
// closed), the uploaded ciphertext stays on the server, unreadable, and
// the error is returned.
func (p *Plugin) SendFile(ctx context.Context, to jid.JID, r io.Reader, size int64, name string, uopts *media.UploadOptions, opts ...SendOption) (*SendResult, media.File, error) {
	return p.sendFile(ctx, r, size, name, uopts, func(ctx context.Context, body string) (*SendResult, error) {
		return p.Send(ctx, to, body, opts...)
	})
}

// SendGroupFile is SendFile for a room the plugin tracks (see SendGroup).
func (p *Plugin) SendGroupFile(ctx context.Context, room jid.JID, r io.Reader, size int64, name string, uopts *media.UploadOptions, opts ...SendOption) (*SendResult, media.File, error) {
	return p.sendFile(ctx, r, size, name, uopts, func(ctx context.Context, body string) (*SendResult, error) {
		return p.SendGroup(ctx, room, body, opts...)
	})
}

func (p *Plugin) sendFile(ctx context.Context, r io.Reader, size int64, name string, uopts *media.UploadOptions, send func(context.Context, string) (*SendResult, error)) (*SendResult, media.File, error) {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	if _, err := p.manager(); err != nil {
		return nil, media.File{}, err
	}
	s, err := p.session()
	if err != nil {
		return nil, media.File{}, err
	}
	link, file, err := media.Upload(ctx, s, r, size, name, uopts)
	if err != nil {
		return nil, media.File{}, fmt.Errorf("omemo: sharing a file: %w", err)
	}
	defer link.Wipe()
	res, err := send(ctx, link.Body())
	if err != nil {
		return nil, file, fmt.Errorf("omemo: sending the link of an uploaded file: %w", err)
	}
	return res, file, nil
}
