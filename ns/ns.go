// Package ns holds the XML namespaces and PEP node names of OMEMO.
//
// OMEMO exists in two incompatible wire formats that clients run side by
// side: OMEMO 2 (urn:xmpp:omemo:2, XEP-0384 0.8 and later) and the legacy
// format (eu.siacs.conversations.axolotl, XEP-0384 0.3) that most deployed
// clients still speak.
package ns

import "strconv"

const (
	// OMEMO2 is the namespace of OMEMO 2 (XEP-0384 0.8 and later).
	OMEMO2 = "urn:xmpp:omemo:2"
	// Legacy is the namespace of legacy OMEMO (XEP-0384 0.3, libsignal wire format).
	Legacy = "eu.siacs.conversations.axolotl"

	// OMEMO2Devices is the PEP node of the OMEMO 2 device list (item id "current").
	OMEMO2Devices = OMEMO2 + ":devices"
	// OMEMO2Bundles is the PEP node of the OMEMO 2 bundles (one item per device id).
	OMEMO2Bundles = OMEMO2 + ":bundles"
	// LegacyDevices is the PEP node of the legacy device list (item id "current").
	LegacyDevices = Legacy + ".devicelist"

	// SCE is the namespace of Stanza Content Encryption (XEP-0420) used by OMEMO 2.
	SCE = "urn:xmpp:sce:1"
	// EME is the namespace of Explicit Message Encryption (XEP-0380).
	EME = "urn:xmpp:eme:0"
)

// LegacyBundles returns the PEP node of the legacy bundle of one device
// (one node per device, item id "current").
func LegacyBundles(deviceID uint32) string {
	return Legacy + ".bundles:" + strconv.FormatUint(uint64(deviceID), 10)
}
