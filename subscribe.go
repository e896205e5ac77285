package omemo

import (
	"context"
	"errors"
	"fmt"

	"mellium.im/xmpp/jid"

	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/pep"
)

// Subscribe subscribes explicitly to the device lists of a contact, in
// every namespace the plugin handles, and refreshes them. PEP notifications
// reach only contacts with a presence subscription (through +notify); for
// anyone else, XEP-0384 0.9 recommends an explicit subscription, so that
// their new devices are learnt before the next message. Servers that refuse
// explicit subscriptions to PEP nodes make the subscription fail; the
// device lists are still refreshed, and Send refreshes them too.
func (p *Plugin) Subscribe(ctx context.Context, contact jid.JID) error {
	mgr, err := p.manager()
	if err != nil {
		return err
	}
	s, err := p.session()
	if err != nil {
		return fmt.Errorf("omemo: subscribe: %w", err)
	}
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	bare := contact.Bare()
	var errs []error
	for _, ns := range mgr.Namespaces() {
		sctx, sdone := bounded(ctx, p.cfg.NetworkTimeout)
		err := pep.Subscribe(sctx, s, bare, devicelist.Node(ns))
		sdone()
		if err != nil {
			errs = append(errs, fmt.Errorf("omemo: subscribing to the %s device list of %s: %w", ns, bare, err))
		}
		if err := mgr.RefreshDeviceList(ctx, ns, bare.String()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
