// Package omemo implements OMEMO end-to-end encryption (XEP-0384) for
// mellium.im/xmpp, in both wire formats that clients use: OMEMO 2
// (urn:xmpp:omemo:2) and legacy OMEMO (eu.siacs.conversations.axolotl).
//
// A Plugin binds to an *xmpp.Session. Register its mux option with Handle
// before Serve, call Start once Serve runs, and use Send for messages that
// must be encrypted: it encrypts for every device of the recipient and of
// the own account that the trust policy allows, with one backend per device
// chosen by priority, and fails closed (nothing is sent) when that is not
// possible. Incoming OMEMO messages, carbons and archived messages reach
// the Handler decrypted, exactly once; key-transport messages are consumed
// silently, and failures go to Config.OnError rather than to the stream.
//
// The OMEMO core is package session, free of XMPP; state lives in a
// store.Store (store.Open is the persistent default); trust policies are
// in package trust. See Example for a complete client in a few lines.
//
// Never restore OMEMO state from a backup: old ratchet state breaks
// sessions and can reuse message keys.
package omemo // import "mellium.im/omemo"
