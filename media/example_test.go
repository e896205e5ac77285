package media_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"mellium.im/omemo/media"
	"mellium.im/xmpp"
)

// The sending side: encrypt and upload a file, then put the link's body in
// an OMEMO message.
func ExampleUpload() {
	var session *xmpp.Session // logged in, with Serve running
	ctx := context.Background()

	f, err := os.Open("holiday.jpg")
	if err != nil {
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return
	}
	link, file, err := media.Upload(ctx, session, f, st.Size(), st.Name(), &media.UploadOptions{
		Progress: func(done, total int64) { fmt.Printf("\r%d/%d", done, total) },
	})
	switch {
	case errors.Is(err, media.ErrFileTooLarge):
		fmt.Println("the server does not take files that large")
		return
	case err != nil:
		fmt.Println(err) // never contains the link
		return
	}
	defer link.Wipe()
	body := link.Body() // send this, OMEMO-encrypted, as the message body
	_ = body
	fmt.Printf("sent %s (%d bytes, sha256 %x) via %v\n", file.Name, file.Size, file.SHA256, link)
}

// The receiving side: a decrypted OMEMO message body is either a link or an
// ordinary message.
func ExampleParseBody() {
	body := "aesgcm://download.montague.tld/4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/tr%C3%A8s%20cool.jpg#8c3d050e9386ec173861778f68e9af38a97aaf82faa4063b4d0878a61261534410c8a84331eaac851759f587"
	link, err := media.ParseBody(body)
	if errors.Is(err, media.ErrInvalidLink) {
		fmt.Println("an ordinary message")
		return
	}
	defer link.Wipe()
	fmt.Println(link.Name(), "from", link.Host())
	fmt.Println(link) // redacted

	_, err = media.ParseBody("look: " + body)
	fmt.Println(err)
	// Output:
	// très cool.jpg from download.montague.tld
	// aesgcm://download.montague.tld/[REDACTED]
	// media: text besides the aesgcm URL
}

// Downloading a received link into a directory, with a size limit.
func ExampleDownload() {
	var link *media.Link // from ParseBody
	ctx := context.Background()

	file, err := media.Download(ctx, link, os.TempDir(), &media.DownloadOptions{
		MaxSize: 100 << 20,
	})
	switch {
	case errors.Is(err, media.ErrAuthentication):
		fmt.Println("the file was tampered with; nothing was saved")
	case errors.Is(err, media.ErrHTTPStatus):
		fmt.Println("the server does not have the file (any more):", err)
	case err != nil:
		fmt.Println(err)
	default:
		fmt.Printf("saved %s (%d bytes)\n", file.Path, file.Size)
	}
}
