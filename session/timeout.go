package session

import (
	"context"
	"time"

	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
)

// DefaultNetworkTimeout bounds each Network call when
// Config.NetworkTimeout is zero.
const DefaultNetworkTimeout = 20 * time.Second

// boundedNetwork gives every call of the Network it wraps a deadline, so
// that a server (or peer) that never answers cannot hold a Manager
// operation, or the background work behind it, for ever.
type boundedNetwork struct {
	net     Network
	timeout time.Duration
}

func (n boundedNetwork) UploadBundle(ctx context.Context, deviceID uint32, b bundle.Bundle) error {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	return n.net.UploadBundle(ctx, deviceID, b)
}

func (n boundedNetwork) DownloadBundle(ctx context.Context, namespace, jid string, deviceID uint32) (bundle.Bundle, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	return n.net.DownloadBundle(ctx, namespace, jid, deviceID)
}

func (n boundedNetwork) DeleteBundle(ctx context.Context, namespace string, deviceID uint32) error {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	return n.net.DeleteBundle(ctx, namespace, deviceID)
}

func (n boundedNetwork) UploadDeviceList(ctx context.Context, l devicelist.List) error {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	return n.net.UploadDeviceList(ctx, l)
}

func (n boundedNetwork) DownloadDeviceList(ctx context.Context, namespace, jid string) (devicelist.List, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	return n.net.DownloadDeviceList(ctx, namespace, jid)
}

func (n boundedNetwork) SendMessage(ctx context.Context, to string, msg *encrypted.Encrypted) error {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	return n.net.SendMessage(ctx, to, msg)
}
