package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/groupchat"
	"mellium.im/omemo/session"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Group chats (XEP-0045 rooms): send -room, listen -room, chat -room and
// the room commands.

// roomFlags are the -room and -nick flags of send, listen and chat.
type roomFlags struct {
	room *string
	nick *string
}

func addRoomFlags(fs *flag.FlagSet, what string) roomFlags {
	return roomFlags{
		room: fs.String("room", "", what+" the group chat `ROOM` (its bare JID, room@service); created if it does not exist"),
		nick: fs.String("nick", "", "`NICK` in the room (default: the account's local part)"),
	}
}

// set reports whether -room was given.
func (f roomFlags) set() bool { return *f.room != "" }

// parse returns the room's full JID (room@service/nick) of the -room and
// -nick flags of command name; with neither given it returns the zero JID.
// -nick without -room is a usage error.
func (f roomFlags) parse(name string, g *globals) (jid.JID, error) {
	if !f.set() {
		if *f.nick != "" {
			return jid.JID{}, usageError("%s: -nick needs -room", name)
		}
		return jid.JID{}, nil
	}
	room, err := parseRoom("-room", *f.room)
	if err != nil {
		return jid.JID{}, err
	}
	nick := *f.nick
	if nick == "" {
		nick = g.account.Localpart()
	}
	full, err := room.WithResource(nick)
	if err != nil || full.Resourcepart() == "" {
		return jid.JID{}, usageError("%s: -nick %q is not a valid nick", name, nick)
	}
	return full, nil
}

// parseRoom parses a room's bare JID given on the command line.
func parseRoom(what, s string) (jid.JID, error) {
	if s == "" {
		return jid.JID{}, usageError("%s is required", what)
	}
	j, err := jid.Parse(s)
	if err != nil || j.Localpart() == "" || j.Domainpart() == "" {
		return jid.JID{}, usageError("%s %q is not a room JID (room@service)", what, s)
	}
	if j.Resourcepart() != "" {
		return jid.JID{}, usageError("%s %q: give the room's bare JID (room@service), without a nick", what, s)
	}
	return j, nil
}

// isRoom reports whether m is a group chat message.
func isRoom(m omemo.Message) bool {
	return !m.Room.Equal(jid.JID{})
}

// roomReceivedText reports whether m is a room message with a text that
// somebody else sent: not the room's copy of a message this device sent
// (Reflected), not a message of another device of the own account (own).
// listen -count counts these room messages and -echo answers them.
func roomReceivedText(m omemo.Message, own jid.JID) bool {
	return !m.Sent && !m.Reflected && m.Body != "" && !m.RealFrom.Bare().Equal(own.Bare())
}

// counted reports whether listen -count counts m (and -echo answers it).
func (c *client) counted(m omemo.Message) bool {
	if isRoom(m) {
		return roomReceivedText(m, c.own())
	}
	return receivedText(m)
}

// own returns the account's bare JID.
func (c *client) own() jid.JID {
	if c.g == nil {
		return jid.JID{}
	}
	return c.g.account.Bare()
}

// eventJSON is a status line with -json (it has no "body").
type eventJSON struct {
	Event string `json:"event"`
	Room  string `json:"room"`
	Nick  string `json:"nick"`
}

// joinRoom joins the room (room@service/nick) and tracks it. A room that
// does not exist is created by the join and then configured as OMEMO
// needs (non-anonymous, members-only, persistent; this account is its
// owner): Plugin.CreateRoom. A room that is not non-anonymous is refused:
// OMEMO cannot be used in it. With events, the -json output gets the
// status lines "created" (if the join created the room) and "joined".
func (c *client) joinRoom(ctx context.Context, full jid.JID, events bool) (*groupchat.Room, error) {
	room, nick := full.Bare(), full.Resourcepart()
	c.out.progress("joining %s as %q…", room, nick)
	jctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	created, err := c.plugin.CreateRoom(jctx, full)
	if err != nil {
		if created {
			return nil, fmt.Errorf("the room %s did not exist and was created, but configuring it failed: %w", room, err)
		}
		return nil, joinError(room, nick, err)
	}
	r, ok := c.plugin.Room(room)
	if !ok {
		return nil, fmt.Errorf("joining %s: %w", room, omemo.ErrRoomNotJoined)
	}
	if created {
		c.out.progress("the room %s did not exist: created it (non-anonymous, members-only, persistent), %s is its owner; "+
			"add members with: omemo -jid %s room create -members JID,JID %s", room, c.g.account.Bare(), c.g.account.Bare(), room)
		if events && c.out.json {
			c.out.result(eventJSON{Event: "created", Room: room.String(), Nick: nick}, "")
		}
	}
	if !r.NonAnonymous() {
		c.leaveRoom(ctx, room)
		return nil, anonymousError(room, fmt.Errorf("%w: %s", groupchat.ErrAnonymous, room))
	}
	if !r.MembersOnly() {
		c.out.warn("the room %s is not members-only: anyone who joins it can read the messages sent while present", room)
	}
	c.out.progress("joined %s as %q", room, nick)
	if events && c.out.json {
		c.out.result(eventJSON{Event: "joined", Room: room.String(), Nick: nick}, "")
	}
	return r, nil
}

// joinLive joins the room for listen and chat, as joinRoom does with its
// status lines, then prints what was sent to it since the last run (its
// archive, from the stored position; nothing the first time). After a
// reconnection the plugin joins it again and reads its archive by itself.
func (c *client) joinLive(ctx context.Context, full jid.JID) error {
	if _, err := c.joinRoom(ctx, full, true); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := c.plugin.CatchUpRoom(cctx, full.Bare()); err != nil && ctx.Err() == nil {
		c.out.warn("reading the archive of %s: %v", full.Bare(), err)
	}
	return nil
}

// joinError explains a failed join.
func joinError(room jid.JID, nick string, err error) error {
	return fmt.Errorf("joining %s as %q: %w (a members-only room admits only its members, and a nick that someone else uses is refused)", room, nick, err)
}

// anonymousError explains why OMEMO cannot be used in a room that is not
// non-anonymous.
func anonymousError(room jid.JID, err error) error {
	return fmt.Errorf("the room %s is not non-anonymous (it hides the real JIDs of its participants), "+
		"and OMEMO must know them to encrypt for them: an owner can make it non-anonymous "+
		"(room configuration muc#roomconfig_whois: anyone): %w", room, err)
}

// leaveRoom leaves a joined room (best effort: the end of the stream
// leaves it too).
func (c *client) leaveRoom(ctx context.Context, room jid.JID) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = c.plugin.LeaveRoom(lctx, room)
}

// roomSendJSON is the result of a message sent to a room with -json.
type roomSendJSON struct {
	Room    string          `json:"room"`
	ID      string          `json:"id"`
	File    *fileJSON       `json:"file,omitempty"`
	Devices []recipientJSON `json:"devices"`
	Errors  []string        `json:"errors"`
}

// sendRoom encrypts body for the room's members and occupants and sends it
// to the room. It does not print the result (see printRoomSent).
func (c *client) sendRoom(ctx context.Context, room jid.JID, body string) (*omemo.SendResult, error) {
	c.out.progress("fetching the device lists and bundles of the members of %s…", room)
	sctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	res, err := c.plugin.SendGroup(sctx, room, body)
	if err != nil {
		return nil, c.sendRoomError(ctx, room, err)
	}
	return res, nil
}

// printRoomSent prints the result of a message sent to a room.
func (c *client) printRoomSent(room jid.JID, res *omemo.SendResult) {
	c.printRoomSentFile(room, res, nil)
}

// printRoomSentFile prints the result of a message (with file: of a file)
// sent to a room.
func (c *client) printRoomSentFile(room jid.JID, res *omemo.SendResult, file *fileJSON) {
	v := roomSendJSON{Room: room.String(), ID: res.ID, File: file}
	v.Devices, v.Errors = c.recipients(res)
	what := res.ID
	if file != nil {
		what = file.sentText() + " as " + res.ID
	}
	c.out.result(v, escapeText(fmt.Sprintf("sent %s to room %s, encrypted for %d device(s): %s", what, room, len(res.Recipients), deviceNames(res))))
}

// sendRoomError explains why SendGroup failed; nothing was sent.
func (c *client) sendRoomError(ctx context.Context, room jid.JID, err error) error {
	var ne *session.NoEligibleDevicesError
	switch {
	case errors.Is(err, groupchat.ErrAnonymous):
		return fmt.Errorf("not sent: %w", anonymousError(room, err))
	case errors.Is(err, groupchat.ErrUnknownOccupant):
		return fmt.Errorf("not sent: the room %s hides the real JID of an occupant, and OMEMO must know it to encrypt: %w", room, err)
	case errors.Is(err, session.ErrStillUndecided):
		var jids []jid.JID
		if r, ok := c.plugin.Room(room); ok {
			jids, _ = r.Recipients()
		}
		return c.undecidedError(ctx, jids, err)
	case errors.As(err, &ne) && len(ne.JIDs) == 1 && ne.JIDs[0] == c.g.account.Bare().String():
		return fmt.Errorf("not sent: nobody in the room %s can be encrypted for: it has no other member or occupant with an OMEMO device, "+
			"and this account has no other device: %w", room, err)
	case errors.As(err, &ne):
		why := "none published, or all distrusted"
		if errors.Is(err, devicelist.ErrAccessDenied) {
			why = "none published, the server refused access to a device list, or all distrusted"
		}
		return fmt.Errorf("not sent: %d member(s) of %s have no OMEMO device that can be encrypted for (%s): %s; "+
			"nothing was sent, as every member must be able to read a room message: %w", len(ne.JIDs), room, why, strings.Join(ne.JIDs, ", "), err)
	case errors.Is(err, session.ErrNoEligibleDevices):
		return fmt.Errorf("not sent: a member of %s has no OMEMO device that can be encrypted for: %w", room, err)
	}
	return fmt.Errorf("not sent: %w", err)
}

// isReflectionOf reports whether m is the room's copy of the message id
// that this device sent to room.
func isReflectionOf(m omemo.Message, room jid.JID, id string) bool {
	return m.Reflected && m.Room.Equal(room) && (m.OriginID == id || m.ID == id)
}

// echoRoom answers a room message of someone else that has a text (see
// roomReceivedText) in the room with "echo: " + its text.
func (c *client) echoRoom(ctx context.Context, m omemo.Message) {
	if !roomReceivedText(m, c.own()) {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if _, err := c.plugin.SendGroup(sctx, m.Room, "echo: "+shownBody(m)); err != nil {
		if !c.echoLater(m, err) {
			c.out.warn("echo in %s: %v", m.Room, c.sendRoomError(ctx, m.Room, err))
		}
		return
	}
	c.out.progress("echoed in %s", m.Room)
}

// roomMessageJSON is a received room message with -json.
type roomMessageJSON struct {
	Room    string    `json:"room"`
	Nick    string    `json:"nick"`
	From    string    `json:"from"`
	Device  uint32    `json:"device"`
	Backend string    `json:"backend"`
	Body    string    `json:"body"`
	Trust   string    `json:"trust"`
	File    *fileJSON `json:"file,omitempty"`
}

// printRoomMessage writes a received room message. The room's copies of
// the messages this device sent (Reflected) are not printed: the send
// result was.
func (c *client) printRoomMessage(m omemo.Message) {
	c.printRoomMessageFile(m, linkJSON(m))
}

// printRoomMessageFile is printRoomMessage with f, the description of the
// message's file (nil if it has none).
func (c *client) printRoomMessageFile(m omemo.Message, f *fileJSON) {
	if m.Reflected {
		return
	}
	v := roomMessageJSON{
		Room:    m.Room.Bare().String(),
		Nick:    m.Nick,
		From:    m.RealFrom.Bare().String(),
		Device:  m.SenderDevice,
		Backend: m.Namespace,
		Body:    shownBody(m),
		Trust:   trustName(m),
		File:    f,
	}
	var flags string
	if m.KeyExchange {
		flags += ", key exchange"
	}
	if m.Sent || m.RealFrom.Bare().Equal(c.own()) {
		flags += ", sent by own device"
	}
	if m.Archived || !m.Delay.IsZero() {
		flags += ", delayed"
	}
	// [room] "nick" (real JID) [device…]: body. The nick, chosen by the
	// sender, is quoted with Go's %q escapes (as device labels are), so
	// that it can neither contain the line's punctuation unquoted nor
	// drive the terminal; the rest is escaped with escapeText.
	text := escapeText("["+v.Room+"] ") + strconv.Quote(m.Nick) +
		escapeText(fmt.Sprintf(" (%s) [device %d, %s, %s%s]: ", v.From, m.SenderDevice, backendName(m.Namespace), v.Trust, flags)) +
		escapeText(v.Body) + f.note()
	c.out.result(v, text)
}

// sendRoomCmd runs send -room: join (or create) the room, send the text
// (or, with sf, the file), wait until the room returned the message (its
// reflection), print the result, then with wait > 0 print what arrives
// until wait ends.
func (c *client) sendRoomCmd(ctx context.Context, full jid.JID, text string, sf *sendFile, wait time.Duration) error {
	room := full.Bare()
	if _, err := c.joinRoom(ctx, full, false); errors.Is(err, groupchat.ErrAnonymous) {
		return fmt.Errorf("not sent: %w", err)
	} else if err != nil {
		return err
	}
	defer c.leaveRoom(ctx, room)
	var (
		res  *omemo.SendResult
		file *fileJSON
		err  error
	)
	if sf != nil {
		res, file, err = c.sendFileToRoom(ctx, room, sf)
	} else {
		res, err = c.sendRoom(ctx, room, text)
	}
	if err != nil {
		return err
	}
	c.out.progress("sent %s; waiting for the room to return it…", res.ID)
	var early []omemo.Message
	timer := time.NewTimer(opTimeout)
	defer timer.Stop()
	for reflected := false; !reflected; {
		select {
		case it := <-c.inbox.ch:
			switch {
			case it.ev != nil:
			case isReflectionOf(it.m, room, res.ID):
				reflected = true
			case wait > 0:
				early = append(early, it.m)
			}
			// Without -wait the others are not printed, nor
			// acknowledged: they come again at the next start.
		case <-timer.C:
			return fmt.Errorf("sent %s to %s, but the room did not return it within %v: it may not have reached the room", res.ID, room, opTimeout)
		case <-ctx.Done():
			return fmt.Errorf("sent %s to %s, but interrupted before the room returned it", res.ID, room)
		case <-c.done():
			return fmt.Errorf("sent %s to %s, but the room did not return it: %w", res.ID, room, c.lost())
		}
	}
	c.printRoomSentFile(room, res, file)
	if wait == 0 {
		return nil
	}
	for _, m := range early {
		if !c.show(ctx, m) {
			return nil
		}
	}
	c.out.progress("waiting %v for replies…", wait)
	return c.printUntil(ctx, wait)
}

// roomCreateJSON is the result of room create with -json.
type roomCreateJSON struct {
	Room    string `json:"room"`
	Created bool   `json:"created"`
}

// roomMembersJSON is the result of room members with -json.
type roomMembersJSON struct {
	Room    string   `json:"room"`
	Owners  []string `json:"owners"`
	Admins  []string `json:"admins"`
	Members []string `json:"members"`
}

func setupRoomCreate(fs *flag.FlagSet) runFunc {
	members := fs.String("members", "", "comma-separated `JID,JID` to make members of the room")
	return func(ctx context.Context, g *globals, args []string, e env) error {
		if len(args) != 1 {
			return usageError("room create: want exactly one ROOM (flags go before it)")
		}
		room, err := parseRoom("room create: ROOM", args[0])
		if err != nil {
			return err
		}
		var who []jid.JID
		for _, s := range strings.Split(*members, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			j, err := jid.Parse(s)
			if err != nil || j.Domainpart() == "" {
				return usageError("room create: -members: %q is not a valid JID", s)
			}
			if !slices.ContainsFunc(who, j.Bare().Equal) {
				who = append(who, j.Bare())
			}
		}
		full, err := room.WithResource(g.account.Localpart())
		if err != nil {
			return usageError("room create: the account's local part %q is not a valid nick", g.account.Localpart())
		}
		return withClient(ctx, g, e, func(c *client) error {
			c.out.progress("joining %s as %q…", room, full.Resourcepart())
			cctx, cancel := context.WithTimeout(ctx, opTimeout+time.Duration(len(who))*10*time.Second)
			defer cancel()
			created, err := c.plugin.CreateRoom(cctx, full, who...)
			if err != nil {
				if created {
					return fmt.Errorf("the room %s was created, but configuring it or adding its members failed: %w", room, err)
				}
				if c.joined(room) {
					c.leaveRoom(ctx, room)
					return fmt.Errorf("the room %s exists already; adding its members or reading its state failed (only its owners and admins can add members): %w", room, err)
				}
				return joinError(room, full.Resourcepart(), err)
			}
			defer c.leaveRoom(ctx, room)
			if r, ok := c.plugin.Room(room); ok && !created {
				if !r.NonAnonymous() {
					c.out.warn("the room %s exists and is not non-anonymous: OMEMO cannot be used in it", room)
				} else if !r.MembersOnly() {
					c.out.warn("the room %s exists and is not members-only", room)
				}
			}
			text := fmt.Sprintf("created the room %s (non-anonymous, members-only, persistent; owner %s)", room, g.account.Bare())
			if !created {
				text = fmt.Sprintf("the room %s exists already", room)
			}
			if len(who) > 0 {
				var names []string
				for _, j := range who {
					names = append(names, j.String())
				}
				text += "; members added: " + strings.Join(names, ", ")
			}
			c.out.result(roomCreateJSON{Room: room.String(), Created: created}, escapeText(text))
			return nil
		})
	}
}

// joined reports whether the plugin is in room.
func (c *client) joined(room jid.JID) bool {
	r, ok := c.plugin.Room(room)
	return ok && r.Joined()
}

func setupRoomMembers(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, g *globals, args []string, e env) error {
		if len(args) != 1 {
			return usageError("room members: want exactly one ROOM")
		}
		room, err := parseRoom("room members: ROOM", args[0])
		if err != nil {
			return err
		}
		full, err := room.WithResource(g.account.Localpart())
		if err != nil {
			return usageError("room members: the account's local part %q is not a valid nick", g.account.Localpart())
		}
		return withClient(ctx, g, e, func(c *client) error {
			qctx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			// Joining a room that does not exist would create it.
			if _, err := disco.GetInfo(qctx, "", room, c.sess); err != nil {
				var se stanza.Error
				if errors.As(err, &se) && se.Condition == stanza.ItemNotFound {
					return fmt.Errorf("the room %s does not exist (create it with: omemo -jid %s room create %s)", room, g.account.Bare(), room)
				}
				return fmt.Errorf("reading the configuration of %s: %w", room, err)
			}
			c.out.progress("joining %s as %q…", room, full.Resourcepart())
			r, err := c.plugin.JoinRoom(qctx, full)
			if err != nil {
				return joinError(room, full.Resourcepart(), err)
			}
			defer c.leaveRoom(ctx, room)
			owners, admins, members, incomplete := r.Affiliations()
			if incomplete != nil {
				c.out.warn("the room %s did not give its complete lists; showing the affiliations seen: %v", room, incomplete)
			}
			v := roomMembersJSON{Room: room.String(), Owners: bareStrings(owners), Admins: bareStrings(admins), Members: bareStrings(members)}
			// One line each, its remote parts escaped.
			list := func(l []string) string {
				if len(l) == 0 {
					return "(none)"
				}
				return escapeText(strings.Join(l, ", "))
			}
			c.out.result(v, fmt.Sprintf("room %s\nowners:  %s\nadmins:  %s\nmembers: %s", escapeText(room.String()), list(v.Owners), list(v.Admins), list(v.Members)))
			return nil
		})
	}
}

// bareStrings returns the bare JIDs of l as sorted strings, without
// duplicates, never nil.
func bareStrings(l []jid.JID) []string {
	out := []string{}
	for _, j := range l {
		out = append(out, j.Bare().String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}
