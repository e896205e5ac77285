package media_test

import (
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"mellium.im/omemo/internal/xmpptest"
	"mellium.im/xmpp"
)

// fakeXMPP is a scripted XMPP server for Upload: disco#info and
// disco#items of the server "localhost" and its items, and slot requests
// to the upload service.
type fakeXMPP struct {
	// onDomain puts the upload feature on "localhost" itself instead of
	// the item "upload.localhost".
	onDomain bool
	// noService advertises no upload service at all.
	noService bool
	// maxSize is the max-file-size value; "" sends no form.
	maxSize string
	// slot answers a slot request with the inner XML of the <slot/> or,
	// if it starts with "<error", of the error.
	slot func(name string, size int64, contentType string) string

	mu       sync.Mutex
	requests []string // "filename size content-type" of each slot request
	iqs      int
}

type fakeIQ struct {
	ID      string `xml:"id,attr"`
	To      string `xml:"to,attr"`
	Type    string `xml:"type,attr"`
	Inner   string `xml:",innerxml"`
	Request *struct {
		Filename    string `xml:"filename,attr"`
		Size        int64  `xml:"size,attr"`
		ContentType string `xml:"content-type,attr"`
	} `xml:"urn:xmpp:http:upload:0 request"`
}

const (
	nsInfo  = "http://jabber.org/protocol/disco#info"
	nsItems = "http://jabber.org/protocol/disco#items"
	nsUp    = "urn:xmpp:http:upload:0"
)

func (f *fakeXMPP) answer(iq *fakeIQ) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.iqs++
	uploadJID := "upload.localhost"
	if f.onDomain {
		uploadJID = "localhost"
	}
	serviceInfo := `<query xmlns='` + nsInfo + `'><identity category='store' type='file' name='HTTP File Upload'/><feature var='` + nsUp + `'/>`
	if f.maxSize != "" {
		serviceInfo += `<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'><value>` + nsUp + `</value></field><field var='max-file-size'><value>` + f.maxSize + `</value></field></x>`
	}
	serviceInfo += `</query>`
	switch {
	case iq.Request != nil && iq.To == uploadJID:
		r := iq.Request
		f.requests = append(f.requests, fmt.Sprintf("%s %d %s", r.Filename, r.Size, r.ContentType))
		inner := f.slot(r.Filename, r.Size, r.ContentType)
		if strings.HasPrefix(inner, "<error") {
			return `<iq type='error' id='` + iq.ID + `' from='` + iq.To + `'>` + inner + `</iq>`
		}
		return `<iq type='result' id='` + iq.ID + `' from='` + iq.To + `'><slot xmlns='` + nsUp + `'>` + inner + `</slot></iq>`
	case strings.Contains(iq.Inner, nsInfo) && iq.To == uploadJID && !f.noService:
		return `<iq type='result' id='` + iq.ID + `' from='` + iq.To + `'>` + serviceInfo + `</iq>`
	case strings.Contains(iq.Inner, nsInfo):
		return `<iq type='result' id='` + iq.ID + `' from='` + iq.To + `'><query xmlns='` + nsInfo + `'><identity category='server' type='im'/><feature var='` + nsInfo + `'/></query></iq>`
	case strings.Contains(iq.Inner, nsItems) && iq.To == "localhost":
		return `<iq type='result' id='` + iq.ID + `' from='localhost'><query xmlns='` + nsItems + `'><item jid='conference.localhost' name='Chatrooms'/><item jid='upload.localhost' name='HTTP File Upload'/></query></iq>`
	}
	return `<iq type='error' id='` + iq.ID + `' from='` + iq.To + `'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`
}

// session runs a client session for alice@localhost/r against f.
func (f *fakeXMPP) session(t testing.TB) *xmpp.Session {
	t.Helper()
	return xmpptest.Session(t, f.answer)
}

func (f *fakeXMPP) slotRequests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// fileServer is an HTTPS file store in the manner of an HTTP File Upload
// service, with misbehaving variants of GET selected by the first path
// element: /files/<id>/<name> is the normal one.
type fileServer struct {
	ts  *httptest.Server
	dir string

	mu        sync.Mutex
	puts      []http.Header // headers of each PUT, with Content-Length
	putStatus int           // answer to PUT; 0 means 201
	next      int
}

const token = "Bearer secret-token"

func newFileServer(t testing.TB) *fileServer {
	t.Helper()
	fs := &fileServer{dir: t.TempDir()}
	fs.ts = httptest.NewUnstartedServer(http.HandlerFunc(fs.serve))
	// Handshakes that fail on purpose (an untrusting client) are not news.
	fs.ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	fs.ts.StartTLS()
	t.Cleanup(fs.ts.Close)
	return fs
}

// slotXML returns the inner XML of a slot for a file; the PUT carries the
// Authorization header, a Cookie with a newline the client must strip,
// and a header XEP-0363 does not allow.
func (fs *fileServer) slotXML(name string) string {
	fs.mu.Lock()
	fs.next++
	id := strconv.Itoa(fs.next)
	fs.mu.Unlock()
	u := fs.ts.URL + "/files/" + id + "/" + url.PathEscape(name)
	var b strings.Builder
	b.WriteString(`<put url='`)
	_ = xml.EscapeText(&b, []byte(u))
	b.WriteString(`'><header name='Authorization'>` + token + `</header><header name='cookie'>a=b;
 c=d</header><header name='X-Other'>no</header></put><get url='`)
	_ = xml.EscapeText(&b, []byte(u))
	b.WriteString(`'/>`)
	return b.String()
}

func (fs *fileServer) client() *http.Client { return fs.ts.Client() }

func (fs *fileServer) putHeaders() []http.Header {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]http.Header(nil), fs.puts...)
}

func (fs *fileServer) serve(w http.ResponseWriter, r *http.Request) {
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	if len(parts) < 2 {
		http.NotFound(w, r)
		return
	}
	mode, id := parts[0], parts[1]
	stored := filepath.Join(fs.dir, id)
	if r.Method == http.MethodPut {
		fs.mu.Lock()
		h := r.Header.Clone()
		h.Set("Content-Length", strconv.FormatInt(r.ContentLength, 10))
		fs.puts = append(fs.puts, h)
		status := fs.putStatus
		fs.mu.Unlock()
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		if r.Header.Get("Authorization") != token {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		f, err := os.Create(stored + "~")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		n, err := io.Copy(f, r.Body)
		f.Close()
		if err != nil || n != r.ContentLength {
			os.Remove(stored + "~")
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		os.Rename(stored+"~", stored)
		w.WriteHeader(http.StatusCreated)
		return
	}
	switch mode {
	case "404":
		http.NotFound(w, r)
		return
	case "500":
		http.Error(w, "boom", http.StatusInternalServerError)
		return
	case "redirect-http":
		http.Redirect(w, r, "http://"+r.Host+"/files/"+id+"/x", http.StatusFound)
		return
	case "redirect":
		http.Redirect(w, r, "/files/"+id+"/x", http.StatusFound)
		return
	}
	f, err := os.Open(stored)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	st, _ := f.Stat()
	size := st.Size()
	switch mode {
	case "files":
		http.ServeContent(w, r, "", st.ModTime(), f)
	case "flip": // one bit flipped in the middle
		b, _ := io.ReadAll(f)
		b[len(b)/2] ^= 0x10
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	case "extra": // one byte appended, announced
		b, _ := io.ReadAll(f)
		b = append(b, 0)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	case "short": // fewer bytes than a tag
		w.Header().Set("Content-Length", "10")
		io.CopyN(w, f, 10)
	case "chunked": // no Content-Length
		buf := make([]byte, 1000)
		for {
			n, err := f.Read(buf)
			w.Write(buf[:n])
			w.(http.Flusher).Flush()
			if err != nil {
				return
			}
		}
	case "stall": // half, then nothing
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		io.CopyN(w, f, size/2)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	case "truncate", "more":
		// Raw responses: announce all and send half, or announce fewer
		// bytes than are sent.
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		announce, send := size, size/2
		if mode == "more" {
			announce, send = size-5, size
		}
		fmt.Fprintf(brw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", announce)
		io.CopyN(brw, f, send)
		brw.Flush()
	default:
		http.NotFound(w, r)
	}
}
