package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/media"
	"mellium.im/omemo/reconnect"
	"mellium.im/xmpp/jid"
)

const (
	testFrag = "0123456789abcdef01234567" + "89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567"
	testLink = "aesgcm://up.example.org:5281/share/Ab12/holiday%20photo.jpg#" + testFrag
)

func fileMessage(t *testing.T) omemo.Message {
	t.Helper()
	m := testMessage(testLink)
	l, err := media.ParseBody(testLink)
	if err != nil {
		t.Fatal(err)
	}
	m.File = l
	return m
}

// TestPrintFile checks the lines of a received file: its name as the
// body, the https URL without the key (not downloaded), the path, size
// and SHA-256 (downloaded), or the error (the download failed); never the
// link.
func TestPrintFile(t *testing.T) {
	const header = "mallory@example.org [device 42, OMEMO 0.3 (legacy), undecided]: holiday photo.jpg"
	const jsonHead = `{"from":"mallory@example.org","device":42,"backend":"eu.siacs.conversations.axolotl","body":"holiday photo.jpg","trust":"undecided","key_exchange":false,"file":`
	size := int64(1234)
	for _, tc := range []struct {
		name       string
		f          func(m omemo.Message) *fileJSON
		text, json string
	}{
		{"not downloaded", linkJSON,
			header + " [file, not downloaded: https://up.example.org:5281/share/Ab12/holiday%20photo.jpg]",
			jsonHead + `{"name":"holiday photo.jpg","url":"https://up.example.org:5281/share/Ab12/holiday%20photo.jpg"}}`},
		{"downloaded", func(m omemo.Message) *fileJSON {
			return &fileJSON{Path: "/tmp/dl/holiday photo (1).jpg", Name: m.File.Name(), Size: &size, SHA256: strings.Repeat("ab", 32)}
		},
			header + " [file saved as /tmp/dl/holiday photo (1).jpg, 1234 bytes, sha256 " + strings.Repeat("ab", 32) + "]",
			jsonHead + `{"path":"/tmp/dl/holiday photo (1).jpg","name":"holiday photo.jpg","size":1234,"sha256":"` + strings.Repeat("ab", 32) + `"}}`},
		{"failed", func(m omemo.Message) *fileJSON {
			return &fileJSON{Name: m.File.Name(), URL: m.File.URL(), Error: media.ErrAuthentication.Error()}
		},
			header + " [file not downloaded: media: file failed authentication]",
			jsonHead + `{"name":"holiday photo.jpg","url":"https://up.example.org:5281/share/Ab12/holiday%20photo.jpg","error":"media: file failed authentication"}}`},
	} {
		for _, jsonOut := range []bool{false, true} {
			var o, e bytes.Buffer
			c := &client{out: newOutput(jsonOut, &o, &e)}
			m := fileMessage(t)
			c.printMessageFile(m, tc.f(m))
			want := tc.text
			if jsonOut {
				want = tc.json
			}
			if got := strings.TrimSuffix(o.String(), "\n"); got != want || e.Len() != 0 {
				t.Errorf("%s (json %v): printed\n%s\nwant\n%s\nstderr %q", tc.name, jsonOut, got, want, e.String())
			}
			if strings.Contains(o.String(), testFrag) || strings.Contains(o.String(), "aesgcm") {
				t.Errorf("%s: the link was printed: %s", tc.name, o.String())
			}
		}
	}
	// A room message.
	m := fileMessage(t)
	m.Room, m.Nick, m.RealFrom = jid.MustParse("team@conference.example.org"), "mal", jid.MustParse("mallory@example.org")
	var o bytes.Buffer
	c := &client{out: newOutput(true, &o, &o)}
	c.printMessage(m)
	if want := `{"room":"team@conference.example.org","nick":"mal","from":"mallory@example.org","device":42,"backend":"eu.siacs.conversations.axolotl","body":"holiday photo.jpg","trust":"undecided","file":{"name":"holiday photo.jpg","url":"https://up.example.org:5281/share/Ab12/holiday%20photo.jpg"}}` + "\n"; o.String() != want {
		t.Errorf("room file printed\n%s\nwant\n%s", o.String(), want)
	}
	// show without -download prints the link and wipes the key.
	o.Reset()
	m = fileMessage(t)
	c = &client{out: newOutput(false, &o, &o)}
	if !c.show(t.Context(), m) || !strings.HasSuffix(o.String(), "[file, not downloaded: https://up.example.org:5281/share/Ab12/holiday%20photo.jpg]\n") {
		t.Errorf("show printed %q", o.String())
	}
	if _, err := media.Download(t.Context(), m.File, t.TempDir(), nil); !errors.Is(err, media.ErrWiped) {
		t.Errorf("the key was not wiped after printing: %v", err)
	}
	// A text message has no "file".
	o.Reset()
	c = &client{out: newOutput(true, &o, &o)}
	c.printMessage(testMessage("aesgcm://not a link"))
	if strings.Contains(o.String(), `"file"`) || !strings.Contains(o.String(), `"body":"aesgcm://not a link"`) {
		t.Errorf("text message printed %s", o.String())
	}
}

// TestPrintSentFile checks the result lines of send -file.
func TestPrintSentFile(t *testing.T) {
	res := &omemo.SendResult{ID: "abc"}
	size := int64(0)
	f := &fileJSON{Name: "empty.bin", Size: &size, SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
	var o, e bytes.Buffer
	c := &client{out: newOutput(true, &o, &e)}
	c.printSent(jid.MustParse("bob@example.org"), res, f)
	c.printRoomSentFile(jid.MustParse("team@conference.example.org"), res, f)
	want := `{"to":"bob@example.org","id":"abc","file":{"name":"empty.bin","size":0,"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},"devices":[],"errors":[]}` + "\n" +
		`{"room":"team@conference.example.org","id":"abc","file":{"name":"empty.bin","size":0,"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},"devices":[],"errors":[]}` + "\n"
	if o.String() != want {
		t.Errorf("JSON\n%s\nwant\n%s", o.String(), want)
	}
	o.Reset()
	c = &client{out: newOutput(false, &o, &e)}
	c.printSent(jid.MustParse("bob@example.org"), res, f)
	if want := "sent the file empty.bin (0 bytes, sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855) as abc to bob@example.org, encrypted for 0 device(s): \n"; o.String() != want {
		t.Errorf("text %q, want %q", o.String(), want)
	}
	// A text message's result has no "file".
	o.Reset()
	c = &client{out: newOutput(true, &o, &e)}
	c.printSent(jid.MustParse("bob@example.org"), res, nil)
	if want := `{"to":"bob@example.org","id":"abc","devices":[],"errors":[]}` + "\n"; o.String() != want {
		t.Errorf("JSON %s, want %s", o.String(), want)
	}
}

// TestProgressBar: drawn on a terminal only, never with -json.
func TestProgressBar(t *testing.T) {
	var o, e bytes.Buffer
	out := newOutput(false, &o, &e)
	if out.tty {
		t.Fatal("a buffer taken for a terminal")
	}
	b := out.bar("uploading x")
	if b.progress() != nil {
		t.Error("a bar on a pipe has a callback")
	}
	b.update(1, 2)
	b.finish()
	out.tty = true
	b = out.bar("uploading \x1b[2Jx")
	b.update(0, 4<<20)
	b.update(1<<20, 4<<20) // within barRedraw: skipped
	b.update(4<<20, 4<<20)
	b.finish()
	got := e.String()
	want := "\ruploading \\x1b[2Jx [>                             ]   0% 0 B/4.0 MiB" +
		"\ruploading \\x1b[2Jx [==============================] 100% 4.0 MiB/4.0 MiB\n"
	if got != want || o.Len() != 0 {
		t.Errorf("bar drew\n%q\nwant\n%q", got, want)
	}
	e.Reset()
	out = newOutput(true, &o, &e)
	out.tty = true
	b = out.bar("x")
	b.update(1, 2)
	b.finish()
	if e.Len() != 0 || o.Len() != 0 {
		t.Errorf("bar with -json drew %q", e.String())
	}
	for _, tc := range []struct {
		done, total int64
		want        string
	}{
		{0, 0, "l [==============================] 100% 0 B"},
		{1536, -1, "l 1.5 KiB"},
		{5, 10, "l [===============>              ]  50% 5 B/10 B"},
		{3 << 30, 6 << 30, "l [===============>              ]  50% 3.0 GiB/6.0 GiB"},
	} {
		if got := barLine("l", tc.done, tc.total); got != tc.want {
			t.Errorf("barLine(%d, %d) = %q, want %q", tc.done, tc.total, got, tc.want)
		}
	}
}

// TestInbox: messages and events come out in order; HandleOMEMO waits
// beyond the limit (events never do) and gives up when the inbox closes.
func TestInbox(t *testing.T) {
	b := newInbox(2)
	msg := func(body string) omemo.Message { return omemo.Message{Body: body} }
	b.HandleOMEMO(msg("1"))
	b.event(reconnect.Event{Connected: false})
	b.HandleOMEMO(msg("2"))
	third := make(chan struct{})
	go func() {
		b.HandleOMEMO(msg("3"))
		close(third)
	}()
	select {
	case <-third:
		t.Fatal("HandleOMEMO did not wait beyond the limit")
	case <-time.After(50 * time.Millisecond):
	}
	b.event(reconnect.Event{Connected: true})
	var got []string
	for range 5 {
		select {
		case it := <-b.ch:
			if it.ev != nil {
				got = append(got, "connected="+map[bool]string{true: "y", false: "n"}[it.ev.Connected])
			} else {
				got = append(got, it.m.Body)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("got %q, then nothing", got)
		}
	}
	<-third
	if want := "1 connected=n 2 connected=y 3"; strings.Join(got, " ") != want {
		t.Errorf("order %q, want %q", got, want)
	}
	// Closed: HandleOMEMO returns at once.
	b.HandleOMEMO(msg("4"))
	b.HandleOMEMO(msg("5"))
	done := make(chan struct{})
	go func() {
		b.HandleOMEMO(msg("6"))
		close(done)
	}()
	b.close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("HandleOMEMO still waits after close")
	}
	b.HandleOMEMO(msg("7"))

	// Without a limit nothing waits.
	b = newInbox(0)
	defer b.close()
	for i := range 1000 {
		b.HandleOMEMO(msg(string(rune('a' + i%26))))
	}
}

// TestConnEvents checks the connection lines: one "disconnected" when the
// connection is lost (the failed attempts after it are progress), one
// "connected" when it is back.
func TestConnEvents(t *testing.T) {
	for _, jsonOut := range []bool{true, false} {
		var o, e bytes.Buffer
		c := &client{out: newOutput(jsonOut, &o, &e), live: &liveState{}}
		lost := errors.New("reconnect: session lost: EOF")
		c.connEvent(t.Context(), reconnect.Event{Err: lost, Retry: time.Second})
		c.connEvent(t.Context(), reconnect.Event{Err: errors.New("reconnect: connecting: refused"), Retry: 2 * time.Second})
		c.connEvent(t.Context(), reconnect.Event{Connected: true})
		c.connEvent(t.Context(), reconnect.Event{Err: errors.New("reconnect: the server closed the session\x1b[2J"), Retry: time.Second})
		c.connEvent(t.Context(), reconnect.Event{Connected: true})
		want := `{"event":"disconnected","error":"session lost: EOF"}
{"event":"connected"}
{"event":"disconnected","error":"the server closed the session\u001b[2J"}
{"event":"connected"}
`
		if !jsonOut {
			want = `* disconnected: session lost: EOF; reconnecting…
* connected again
* disconnected: the server closed the session\x1b[2J; reconnecting…
* connected again
`
		}
		if o.String() != want {
			t.Errorf("json %v: printed\n%s\nwant\n%s", jsonOut, o.String(), want)
		}
		if !jsonOut && !strings.Contains(e.String(), "reconnecting failed (refused); next attempt in 2s") {
			t.Errorf("progress:\n%s", e.String())
		}
	}
}
