// Package omemo implements OMEMO end-to-end encryption (XEP-0384) for mellium.im/xmpp.
package omemo // import "mellium.im/omemo"
