package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/media"
	"mellium.im/omemo/store"
	"mellium.im/xmpp/jid"
)

// Files of 0 bytes, 1 KiB and 5 MiB go from one plugin to another through
// Prosody's HTTP File Upload, 1:1 and in a room: the receiver's Message
// carries the link, media.Download saves the file, and the SHA-256 is the
// same on both sides.
func TestIntegrationSendFile(t *testing.T) {
	srv := prosodytest.StartWithUpload(t, prosodytest.User{Name: "alice", Contacts: []string{"bob"}}, prosodytest.User{Name: "bob"})
	alice := connect(t, srv, "alice", store.NewMemory(), omemo.Config{SendPresence: true}, true)
	bob := connect(t, srv, "bob", store.NewMemory(), omemo.Config{SendPresence: true}, true)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bobJID := srv.JID("bob")
	room := roomJID(t, "files", "alice")
	if _, err := alice.p.CreateRoom(ctx, room, bobJID); err != nil {
		t.Fatal(err)
	}
	join(t, bob, roomJID(t, "files", "bob"))
	if err := alice.p.RefreshRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	uopts := &media.UploadOptions{HTTPClient: srv.HTTPClient(t)}
	for _, size := range []int{0, 1 << 10, 5 << 20} {
		for _, inRoom := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d bytes, room %v", size, inRoom), func(t *testing.T) {
				data := make([]byte, size)
				_, _ = rand.Read(data)
				name := fmt.Sprintf("file-%d.bin", size)
				var (
					file media.File
					err  error
				)
				if inRoom {
					_, file, err = alice.p.SendGroupFile(ctx, room.Bare(), bytes.NewReader(data), int64(size), name, uopts)
				} else {
					_, file, err = alice.p.SendFile(ctx, bobJID, bytes.NewReader(data), int64(size), name, uopts)
				}
				if err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256(data)
				if file.Size != int64(size) || file.SHA256 != sum {
					t.Fatalf("sent %d bytes %s, want %d %x", file.Size, file.SHA256, size, sum)
				}
				m := expectOther(bob, 30*time.Second)
				if m.File == nil {
					t.Fatalf("message without a file: %.40q", m.Body)
				}
				if !m.Room.Equal(roomOrZero(inRoom, room)) {
					t.Fatalf("message in room %v", m.Room)
				}
				if s := fmt.Sprint(m.File, *m.File); bytes.Contains([]byte(s), []byte("#")) {
					t.Fatalf("a link prints its fragment: %s", s)
				}
				dir := t.TempDir()
				got, err := media.Download(ctx, m.File, dir, &media.DownloadOptions{HTTPClient: srv.HTTPClient(t)})
				m.File.Wipe()
				if err != nil {
					t.Fatal(err)
				}
				if got.SHA256 != file.SHA256 || got.Size != file.Size || got.Name != name {
					t.Fatalf("received %+v, sent %+v", got, file)
				}
				b, err := os.ReadFile(got.Path)
				if err != nil || !bytes.Equal(b, data) {
					t.Fatalf("saved file differs (%v)", err)
				}
				if filepath.Dir(got.Path) != dir {
					t.Fatalf("saved at %s, outside %s", got.Path, dir)
				}
			})
		}
	}
}

func roomOrZero(inRoom bool, room jid.JID) jid.JID {
	if inRoom {
		return room.Bare()
	}
	return jid.JID{}
}
