package omemo_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"mellium.im/omemo"
	"mellium.im/omemo/media"
	"mellium.im/xmpp/jid"
)

// A bot shares a log file encrypted (XEP-0454): it is encrypted while it
// uploads to the server's HTTP File Upload service, and only the OMEMO
// message carries its key. The receiving side saves a file once its tag
// verified.
func ExamplePlugin_SendFile() {
	var p *omemo.Plugin // from omemo.New, registered with Handle and started
	ctx := context.Background()
	f, err := os.Open("/var/log/backup.log")
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		log.Fatal(err)
	}
	bob := jid.MustParse("bob@example.org")
	_, sent, err := p.SendFile(ctx, bob, f, st.Size(), "backup.log", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("shared %s, %d bytes, sha256 %x\n", sent.Name, sent.Size, sent.SHA256)

	// In the Handler of the receiving side:
	handle := func(m omemo.Message) {
		if m.File == nil {
			return // an ordinary message
		}
		defer m.File.Wipe()
		got, err := media.Download(ctx, m.File, "/srv/inbox", &media.DownloadOptions{MaxSize: 100 << 20})
		if err != nil { // wrong tag, too large, not https…: nothing was saved
			log.Print(err)
			return
		}
		fmt.Printf("saved %s (%d bytes)\n", got.Path, got.Size)
	}
	_ = omemo.HandlerFunc(handle)
}
