// Package devicelist encodes and decodes OMEMO device lists.
//
// A device list is the PEP item, published under item id [ItemID] in the node
// returned by [Node], that announces the device ids of an account.
// Both wire formats are supported:
//
//	<devices xmlns='urn:xmpp:omemo:2'><device id='1' label='…' labelsig='…'/>…</devices>
//	<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/>…</list>
//
// The package is a pure codec: it performs no cryptography.
// In particular it does not verify label signatures; a label read from the
// network is attacker controlled until the caller has checked
// [Device.LabelSignature] against the device's identity key, and XEP-0384
// requires an unsigned or badly signed label to be ignored.
//
// Parsing never panics, keeps memory bounded by the size of the input, and
// reports malformed input with errors that wrap the sentinel errors of this
// package (use errors.Is).
package devicelist // import "mellium.im/omemo/devicelist"

import (
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"

	"mellium.im/omemo/internal/xmlutil"
	"mellium.im/omemo/ns"
	"mellium.im/xmlstream"
)

// ItemID is the PubSub item id under which device lists of both namespaces
// are published.
const ItemID = "current"

// MaxDevices is the largest number of <device> elements a device list may
// contain.
// Longer lists are refused with ErrTooManyDevices before they are fully read.
const MaxDevices = 10000

// Errors returned by the codec.
var (
	// ErrWrongElement means that the element is not a device list of a known
	// namespace (<devices xmlns='urn:xmpp:omemo:2'> or
	// <list xmlns='eu.siacs.conversations.axolotl'>).
	ErrWrongElement = errors.New("devicelist: not a device list element")
	// ErrUnknownNamespace means that a List to be encoded has a namespace
	// other than ns.OMEMO2 or ns.Legacy.
	ErrUnknownNamespace = errors.New("devicelist: unknown namespace")
	// ErrInvalidID means that a device id is missing, not a decimal number,
	// zero or larger than 2^32-1.
	ErrInvalidID = errors.New("devicelist: invalid device id")
	// ErrDuplicateID means that a List to be encoded contains a device id more
	// than once.
	ErrDuplicateID = errors.New("devicelist: duplicate device id")
	// ErrInvalidLabel means that a label to be encoded is not valid UTF-8 or
	// contains characters that XML cannot carry.
	ErrInvalidLabel = errors.New("devicelist: label not representable in XML")
	// ErrTooManyDevices means that a device list has more than MaxDevices
	// entries.
	ErrTooManyDevices = errors.New("devicelist: too many devices")
)

// Device is one entry of a device list.
type Device struct {
	// ID is the device id, never zero.
	ID uint32
	// Label is an optional, user-chosen description of the device
	// (OMEMO 2 only).
	// It is untrusted until LabelSignature has been verified.
	Label string
	// LabelSignature is the signature of Label by the device's identity key,
	// as carried in the labelsig attribute (OMEMO 2 only).
	// It is only meaningful, and only encoded, when Label is not empty.
	// XEP-0384 0.9 requires it whenever a label is published, but
	// python-twomemo 1.0.x rejects device lists that carry the attribute, so
	// whether to send it is the caller's choice.
	LabelSignature []byte
}

// List is a device list of one of the two OMEMO namespaces.
type List struct {
	// Namespace is ns.OMEMO2 or ns.Legacy.
	Namespace string
	// Devices holds the entries in document order, each id at most once.
	Devices []Device
}

// Node returns the PEP node of the device list of the given namespace,
// or the empty string for an unknown namespace.
func Node(namespace string) string {
	switch namespace {
	case ns.OMEMO2:
		return ns.OMEMO2Devices
	case ns.Legacy:
		return ns.LegacyDevices
	}
	return ""
}

// elementName returns the name of the device list element of namespace.
func elementName(namespace string) (xml.Name, bool) {
	switch namespace {
	case ns.OMEMO2:
		return xml.Name{Space: ns.OMEMO2, Local: "devices"}, true
	case ns.Legacy:
		return xml.Name{Space: ns.Legacy, Local: "list"}, true
	}
	return xml.Name{}, false
}

// Parse decodes a device list.
// start is the start element of the list, already consumed from r;
// r yields the content of the element and then, optionally, its end element
// (as the token readers that mellium passes to handlers do).
// Parse stops after the end element and does not read further.
//
// The namespace is taken from start.
// Device ids must be non-zero decimal uint32 values; any invalid id rejects
// the whole list.
// Duplicate ids keep their first occurrence.
// An empty list is valid.
// Unknown attributes and child elements are ignored.
// In the legacy namespace labels are ignored.
// In the OMEMO 2 namespace a labelsig that is not valid base64, or that
// accompanies no label, is dropped (the device is kept).
func Parse(r xml.TokenReader, start xml.StartElement) (*List, error) {
	return parse(xmlutil.NewTokenStream(r), start)
}

func parse(s *xmlutil.TokenStream, start xml.StartElement) (*List, error) {
	namespace := start.Name.Space
	if want, ok := elementName(namespace); !ok || start.Name != want {
		return nil, fmt.Errorf("%w: got %.64q in namespace %.64q", ErrWrongElement, start.Name.Local, start.Name.Space)
	}
	l := &List{Namespace: namespace}
	seen := make(map[uint32]struct{})
	count := 0
	for {
		tok, err := s.Next()
		if err == io.EOF {
			return l, nil
		}
		if err != nil {
			return nil, fmt.Errorf("devicelist: %w", err)
		}
		switch tok := tok.(type) {
		case xml.EndElement:
			return l, nil
		case xml.StartElement:
			isDevice := xmlutil.IsChild(tok.Name, namespace, "device")
			var d Device
			if isDevice {
				count++
				if count > MaxDevices {
					return nil, fmt.Errorf("%w: more than %d", ErrTooManyDevices, MaxDevices)
				}
				if d, err = parseDevice(tok, namespace); err != nil {
					return nil, fmt.Errorf("%w: device %d: %w", ErrInvalidID, count, err)
				}
			}
			if err := s.Skip(); err != nil {
				return nil, fmt.Errorf("devicelist: %w", err)
			}
			if _, dup := seen[d.ID]; !isDevice || dup {
				continue
			}
			seen[d.ID] = struct{}{}
			l.Devices = append(l.Devices, d)
		}
	}
}

// parseDevice reads the attributes of a <device> element.
// The only error it returns is an invalid id.
func parseDevice(start xml.StartElement, namespace string) (Device, error) {
	v, present := xmlutil.Attr(start, "id")
	id, err := xmlutil.ParseID(v, present)
	if err != nil {
		return Device{}, err
	}
	d := Device{ID: id}
	if namespace != ns.OMEMO2 {
		return d, nil
	}
	d.Label, _ = xmlutil.Attr(start, "label")
	if sig, ok := xmlutil.Attr(start, "labelsig"); ok && d.Label != "" {
		// A signature that cannot be decoded is dropped; the caller then
		// treats the label as unsigned.
		if b, err := xmlutil.DecodeBase64([]byte(sig)); err == nil && len(b) > 0 {
			d.LabelSignature = b
		}
	}
	return d, nil
}

// Decode reads the next element from r and decodes it as a device list.
// Tokens before the first start element (such as a procinst, comments or
// whitespace) are skipped.
func Decode(r xml.TokenReader) (*List, error) {
	return xmlutil.DecodeFirst(r, "devicelist", ErrWrongElement, parse)
}

// UnmarshalXML implements xml.Unmarshaler.
// See Parse for the rules applied.
func (l *List) UnmarshalXML(d *xml.Decoder, start xml.StartElement) error {
	parsed, err := Parse(d, start)
	if err != nil {
		return err
	}
	*l = *parsed
	return nil
}

// validate checks that l can be encoded such that Parse returns it unchanged
// (modulo the dropped parts documented on TokenReader).
func (l List) validate() error {
	if _, ok := elementName(l.Namespace); !ok {
		return ErrUnknownNamespace
	}
	if len(l.Devices) > MaxDevices {
		return fmt.Errorf("%w: %d > %d", ErrTooManyDevices, len(l.Devices), MaxDevices)
	}
	seen := make(map[uint32]struct{}, len(l.Devices))
	for i, d := range l.Devices {
		if d.ID == 0 {
			return fmt.Errorf("%w: device %d: %w", ErrInvalidID, i+1, xmlutil.ErrIDZero)
		}
		if _, dup := seen[d.ID]; dup {
			return fmt.Errorf("%w: %d", ErrDuplicateID, d.ID)
		}
		seen[d.ID] = struct{}{}
		if l.Namespace == ns.OMEMO2 && !xmlutil.ValidString(d.Label) {
			return fmt.Errorf("%w: device %d", ErrInvalidLabel, d.ID)
		}
	}
	return nil
}

// TokenReader implements xmlstream.Marshaler.
//
// In the OMEMO 2 namespace the label attribute is written only when the label
// is not empty, and labelsig only when additionally a signature is present.
// In the legacy namespace labels and signatures are dropped.
// An invalid List (unknown namespace, zero or duplicate id, label that XML
// cannot carry) makes the reader return an error instead of any token.
func (l List) TokenReader() xml.TokenReader {
	if err := l.validate(); err != nil {
		return errReader{err}
	}
	name, _ := elementName(l.Namespace)
	children := make([]xml.TokenReader, 0, len(l.Devices))
	for _, d := range l.Devices {
		attrs := []xml.Attr{{Name: xml.Name{Local: "id"}, Value: strconv.FormatUint(uint64(d.ID), 10)}}
		if l.Namespace == ns.OMEMO2 && d.Label != "" {
			attrs = append(attrs, xml.Attr{Name: xml.Name{Local: "label"}, Value: d.Label})
			if len(d.LabelSignature) > 0 {
				attrs = append(attrs, xml.Attr{
					Name:  xml.Name{Local: "labelsig"},
					Value: base64.StdEncoding.EncodeToString(d.LabelSignature),
				})
			}
		}
		children = append(children, xmlstream.Wrap(nil, xml.StartElement{
			Name: xml.Name{Local: "device"},
			Attr: attrs,
		}))
	}
	return xmlstream.Wrap(xmlstream.MultiReader(children...), xml.StartElement{Name: name})
}

// WriteXML implements xmlstream.WriterTo.
// It writes the same tokens as TokenReader and returns the number of tokens
// written.
func (l List) WriteXML(w xmlstream.TokenWriter) (int, error) {
	return xmlstream.Copy(w, l.TokenReader())
}

// MarshalXML implements xml.Marshaler.
// The start element passed by encoding/xml is ignored: the element name is
// determined by the namespace.
func (l List) MarshalXML(e *xml.Encoder, _ xml.StartElement) error {
	_, err := l.WriteXML(e)
	return err
}

// errReader is a token reader that fails immediately.
type errReader struct{ err error }

func (r errReader) Token() (xml.Token, error) { return nil, r.err }
