// Package pep implements the parts of XEP-0060 (Publish-Subscribe) and
// XEP-0163 (Personal Eventing Protocol) that OMEMO needs, on top of
// mellium.im/xmpp.
//
// It fills the gaps of mellium.im/xmpp/pubsub (v0.23.0):
//
//   - [Publish] sends publish-options (XEP-0060 §7.1.5), recognises the
//     pubsub#errors condition precondition-not-met (which stanza.Error
//     drops), reconfigures the node (§8.2) and retries, and falls back from
//     pubsub#max_items "max" to 1000, 100 and 10 for servers that reject it.
//   - [FetchItem] fetches one item by id with the request shape of §6.5.8
//     (mellium's Query.Item sends an attribute that servers ignore).
//   - [Retract], [DeleteNode], [Subscribe] and [Unsubscribe] are hand-built
//     so that every error is reported as a full [*Error].
//   - [ParseEvent] and [HandleEvents] parse PEP notifications (items,
//     retractions, purge and delete), bound to the bare JID of the sender.
//   - [HandleDisco], [NotifyFeatures] and [CapsPresence] make +notify work
//     with XEP-0115 entity capabilities (sha-1, as Prosody requires).
//
// # Errors
//
// Every operation takes a context and returns errors that can be inspected
// with errors.Is and errors.As: a server error is an [*Error] (which also
// unwraps to a stanza.Error), a fetch of something that was never published
// (item-not-found, or forbidden as Prosody answers non-subscribers) matches
// [ErrNotFound], and a precondition failure matches [ErrPreconditionNotMet].
//
// # Handlers
//
// None of the functions that send IQs may be called from inside an
// xmpp.Handler (including the [HandleEvents] callback): the handler runs in
// the goroutine of Session.Serve, which must keep reading for the IQ result to
// arrive, so the call would block until its context expires.
// Start a goroutine instead.
// The handlers of this package never block and never return an error (a
// handler error closes the whole XMPP stream in mellium).
//
// # Security
//
// Notifications are attributed to the bare JID in the message's from
// attribute, which the server stamps; an empty from means the own account.
// Notifications whose from carries a resource (a contact's client, a MUC
// occupant) are rejected, so a client cannot speak for a PEP service.
// Item payloads and error texts are untrusted input: the parsers never panic,
// do not recurse on the input depth and bound the sizes they keep.
package pep // import "mellium.im/omemo/pep"
