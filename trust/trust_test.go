package trust

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
)

func ik(b byte) [32]byte {
	var k [32]byte
	for i := range k {
		k[i] = b
	}
	return k
}

func dev(jid string, id uint32, key byte, level string) Device {
	return Device{JID: jid, DeviceID: id, IdentityKey: ik(key), Level: level}
}

func key(jid string, b byte) Key { return Key{JID: jid, IdentityKey: ik(b)} }

// recorder is a Prompter that records what it was asked and answers with a
// fixed map (or error).
type recorder struct {
	mu     sync.Mutex
	calls  [][]Device
	answer func([]Device) map[Key]string
	err    error
}

func (r *recorder) prompt(ctx context.Context, und []Device) (map[Key]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, und)
	if r.err != nil {
		return nil, r.err
	}
	if r.answer == nil {
		return nil, nil
	}
	return r.answer(und), nil
}

// answerAll decides every asked device as name.
func answerAll(name string) func([]Device) map[Key]string {
	return func(und []Device) map[Key]string {
		m := make(map[Key]string)
		for _, d := range und {
			m[d.Key()] = name
		}
		return m
	}
}

func TestLevelString(t *testing.T) {
	for l, want := range map[Level]string{Undecided: "undecided", Trusted: "trusted", Distrusted: "distrusted", 3: "Level(3)", 255: "Level(255)"} {
		if got := l.String(); got != want {
			t.Errorf("Level(%d).String() = %q, want %q", uint8(l), got, want)
		}
	}
	if Undecided != 0 {
		t.Errorf("zero Level must be Undecided")
	}
}

func TestDeviceKey(t *testing.T) {
	d := Device{JID: "a@example.org", DeviceID: 7, IdentityKey: ik(3), Label: "phone", Level: LevelTrusted}
	if got, want := d.Key(), key("a@example.org", 3); got != want {
		t.Errorf("Key() = %v, want %v", got, want)
	}
	// Two device ids with the same identity key share one record.
	d2 := d
	d2.DeviceID = 8
	if d.Key() != d2.Key() {
		t.Errorf("device id must not be part of the key")
	}
	if got := d.Key().String(); got != "a@example.org/"+strings.Repeat("03", 32) {
		t.Errorf("Key.String() = %q", got)
	}
}

func TestEvaluateReady(t *testing.T) {
	want := map[string]Level{
		LevelTrusted:        Trusted,
		LevelBlindlyTrusted: Trusted,
		LevelFirstUse:       Trusted,
		LevelUndecided:      Undecided,
		LevelDistrusted:     Distrusted,
	}
	for _, name := range PolicyNames() {
		p, err := ParsePolicy(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		if p.Default() != LevelUndecided {
			t.Errorf("%s: Default() = %q", name, p.Default())
		}
		for lvl, w := range want {
			got, err := p.Evaluate(lvl)
			if err != nil || got != w {
				t.Errorf("%s: Evaluate(%q) = %v, %v; want %v", name, lvl, got, err, w)
			}
		}
		for _, bad := range []string{"", "Trusted", "TRUSTED", "trusted ", "verified", "blindly_trusted"} {
			got, err := p.Evaluate(bad)
			if !errors.Is(err, ErrUnknownLevel) {
				t.Errorf("%s: Evaluate(%q) err = %v, want ErrUnknownLevel", name, bad, err)
			}
			if got != Undecided {
				t.Errorf("%s: Evaluate(%q) = %v on error", name, bad, got)
			}
			if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
				t.Errorf("%s: error %q does not name the level", name, err)
			}
		}
	}
}

func TestParsePolicy(t *testing.T) {
	for in, want := range map[string]string{"btbv": "btbv", "BTBV": "btbv", " tofu\n": "tofu", "Manual": "manual"} {
		p, err := ParsePolicy(in, nil)
		if err != nil {
			t.Errorf("ParsePolicy(%q): %v", in, err)
			continue
		}
		if got := p.(fmt.Stringer).String(); got != want {
			t.Errorf("ParsePolicy(%q) = %s, want %s", in, got, want)
		}
	}
	for _, in := range []string{"", "blind", "tofu2", "custom"} {
		if p, err := ParsePolicy(in, nil); !errors.Is(err, ErrUnknownPolicy) || p != nil {
			t.Errorf("ParsePolicy(%q) = %v, %v; want ErrUnknownPolicy", in, p, err)
		}
	}
	if n := PolicyNames(); n[0] != "btbv" {
		t.Errorf("default policy must be first: %v", n)
	}
	PolicyNames()[0] = "x"
	if PolicyNames()[0] != "btbv" {
		t.Errorf("PolicyNames must return a fresh slice")
	}
}

func TestCustom(t *testing.T) {
	good := map[string]Level{"new": Undecided, "ok": Trusted, "bad": Distrusted, "verified": Trusted}
	p, err := Custom("new", good, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Default() != "new" {
		t.Errorf("Default() = %q", p.Default())
	}
	for name, want := range good {
		if got, err := p.Evaluate(name); err != nil || got != want {
			t.Errorf("Evaluate(%q) = %v, %v", name, got, err)
		}
	}
	// The mapping is copied.
	good["new"] = Trusted
	good["extra"] = Trusted
	if l, _ := p.Evaluate("new"); l != Undecided {
		t.Errorf("Custom did not copy the mapping")
	}
	if _, err := p.Evaluate("extra"); !errors.Is(err, ErrUnknownLevel) {
		t.Errorf("Custom did not copy the mapping: %v", err)
	}
	for _, name := range []string{LevelTrusted, LevelUndecided, ""} {
		if _, err := p.Evaluate(name); !errors.Is(err, ErrUnknownLevel) {
			t.Errorf("custom Evaluate(%q) err = %v", name, err)
		}
	}

	tests := []struct {
		name   string
		def    string
		levels map[string]Level
	}{
		{"nil levels", "new", nil},
		{"empty levels", "new", map[string]Level{}},
		{"default missing", "unknown", map[string]Level{"new": Undecided}},
		{"default trusted", "ok", map[string]Level{"ok": Trusted, "new": Undecided}},
		{"default distrusted", "bad", map[string]Level{"bad": Distrusted}},
		{"empty name", "new", map[string]Level{"new": Undecided, "": Trusted}},
		{"empty default", "", map[string]Level{"": Undecided}},
		{"invalid level", "new", map[string]Level{"new": Undecided, "x": 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Custom(tt.def, tt.levels, nil)
			if !errors.Is(err, ErrInvalidPolicy) || p != nil {
				t.Errorf("Custom = %v, %v; want ErrInvalidPolicy", p, err)
			}
		})
	}
}

const (
	alice = "alice@example.org"
	bob   = "bob@example.net"
)

type decideCase struct {
	name      string
	undecided []Device
	known     []Device
	answer    func([]Device) map[Key]string // prompt answer; nil: no decision
	want      map[Key]string
	asked     []Device // what the prompt must be asked; nil: not called
}

func runDecide(t *testing.T, mk func(Prompter) Policy, tests []decideCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{answer: tt.answer}
			p := mk(r.prompt)
			got, err := p.Decide(context.Background(), tt.undecided, tt.known)
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if got == nil {
				t.Fatalf("Decide returned a nil map")
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("Decide = %v\nwant %v", got, tt.want)
			}
			switch {
			case tt.asked == nil && len(r.calls) != 0:
				t.Errorf("prompt called with %v, want no call", r.calls)
			case tt.asked != nil && len(r.calls) != 1:
				t.Errorf("prompt called %d times, want once", len(r.calls))
			case tt.asked != nil && !slices.Equal(r.calls[0], tt.asked):
				t.Errorf("prompt asked %v\nwant %v", r.calls[0], tt.asked)
			}
			// Only keys of undecided devices may be returned.
			allowed := map[Key]bool{}
			for _, d := range tt.undecided {
				allowed[d.Key()] = true
			}
			for k := range got {
				if !allowed[k] {
					t.Errorf("Decide returned key %s not in undecided", k)
				}
			}
			// The same call with a nil prompt decides only the automatic part.
			got2, err := mk(nil).Decide(context.Background(), tt.undecided, tt.known)
			if err != nil {
				t.Fatalf("Decide with nil prompt: %v", err)
			}
			for k, v := range got2 {
				if got[k] != v {
					t.Errorf("nil prompt: %s = %q, with prompt %q", k, v, got[k])
				}
			}
			if len(got2)+countAnswered(r, tt) != len(got) {
				t.Errorf("nil prompt decided %d, with prompt %d", len(got2), len(got))
			}
		})
	}
}

func countAnswered(r *recorder, tt decideCase) int {
	if len(r.calls) == 0 || tt.answer == nil {
		return 0
	}
	return len(tt.answer(r.calls[0]))
}

func TestBTBVDecide(t *testing.T) {
	runDecide(t, BTBV, []decideCase{
		{
			name:      "first contact",
			undecided: []Device{dev(bob, 2, 2, LevelUndecided), dev(bob, 1, 1, "")},
			known:     []Device{dev(bob, 1, 1, LevelUndecided), dev(bob, 2, 2, LevelUndecided)},
			want:      map[Key]string{key(bob, 1): LevelBlindlyTrusted, key(bob, 2): LevelBlindlyTrusted},
		},
		{
			name:      "new device while still blindly trusting",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelBlindlyTrusted), dev(bob, 2, 2, LevelFirstUse), dev(bob, 3, 3, LevelUndecided)},
			want:      map[Key]string{key(bob, 3): LevelBlindlyTrusted},
		},
		{
			name:      "new device after verification goes to prompt",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelTrusted), dev(bob, 2, 2, LevelBlindlyTrusted)},
			answer:    answerAll(LevelDistrusted),
			want:      map[Key]string{key(bob, 3): LevelDistrusted},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
		},
		{
			name:      "distrusted device does not stop blind trust",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelDistrusted), dev(bob, 2, 2, LevelBlindlyTrusted)},
			want:      map[Key]string{key(bob, 3): LevelBlindlyTrusted},
		},
		{
			name:      "unknown level of a known device goes to prompt",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, "verified-by-qr")},
			answer:    answerAll(LevelTrusted),
			want:      map[Key]string{key(bob, 3): LevelTrusted},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
		},
		{
			name: "mixed JIDs: prompt only gets what remains, sorted",
			undecided: []Device{
				dev(bob, 9, 9, LevelUndecided), dev(alice, 5, 5, LevelUndecided),
				dev(bob, 4, 4, LevelUndecided), dev("carol@example.com", 1, 7, LevelUndecided),
			},
			known: []Device{
				dev(alice, 1, 1, LevelBlindlyTrusted),
				dev(bob, 1, 1, LevelTrusted),
				// A verified key of a JID not concerned changes nothing.
				dev("dave@example.com", 1, 8, LevelTrusted),
			},
			answer: func(und []Device) map[Key]string {
				return map[Key]string{und[0].Key(): LevelTrusted} // only bob/4
			},
			want: map[Key]string{
				key(alice, 5):               LevelBlindlyTrusted,
				key("carol@example.com", 7): LevelBlindlyTrusted,
				key(bob, 4):                 LevelTrusted,
			},
			asked: []Device{dev(bob, 4, 4, LevelUndecided), dev(bob, 9, 9, LevelUndecided)},
		},
		{
			name:      "verified key on another JID does not matter",
			undecided: []Device{dev(bob, 2, 2, LevelUndecided)},
			known:     []Device{dev(alice, 1, 2, LevelTrusted)},
			want:      map[Key]string{key(bob, 2): LevelBlindlyTrusted},
		},
		{
			name:      "prompt may leave devices undecided",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelTrusted)},
			answer:    func([]Device) map[Key]string { return map[Key]string{} },
			want:      map[Key]string{},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
		},
		{
			name: "nothing undecided",
			want: map[Key]string{},
		},
	})
}

func TestTOFUDecide(t *testing.T) {
	runDecide(t, TOFU, []decideCase{
		{
			name:      "first contact",
			undecided: []Device{dev(bob, 1, 1, LevelUndecided), dev(bob, 2, 2, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelUndecided), dev(bob, 2, 2, "")},
			want:      map[Key]string{key(bob, 1): LevelFirstUse, key(bob, 2): LevelFirstUse},
		},
		{
			name:      "new device after first use goes to prompt",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelFirstUse)},
			answer:    answerAll(LevelTrusted),
			want:      map[Key]string{key(bob, 3): LevelTrusted},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
		},
		{
			name:      "distrusted device present goes to prompt",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelDistrusted)},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
			want:      map[Key]string{},
		},
		{
			name:      "unknown level counts as decided",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, "whatever")},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
			want:      map[Key]string{},
		},
		{
			name:      "mixed JIDs",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided), dev(alice, 1, 1, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelBlindlyTrusted), dev(alice, 2, 2, LevelUndecided)},
			answer:    answerAll(LevelDistrusted),
			want:      map[Key]string{key(alice, 1): LevelFirstUse, key(bob, 3): LevelDistrusted},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
		},
	})
}

func TestManualDecide(t *testing.T) {
	runDecide(t, Manual, []decideCase{
		{
			name:      "first contact goes to prompt",
			undecided: []Device{dev(bob, 2, 2, LevelUndecided), dev(alice, 1, 1, LevelUndecided)},
			answer:    answerAll(LevelTrusted),
			want:      map[Key]string{key(alice, 1): LevelTrusted, key(bob, 2): LevelTrusted},
			asked:     []Device{dev(alice, 1, 1, LevelUndecided), dev(bob, 2, 2, LevelUndecided)},
		},
		{
			name:      "new device after verification",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			known:     []Device{dev(bob, 1, 1, LevelTrusted), dev(bob, 2, 2, LevelDistrusted)},
			answer:    answerAll(LevelDistrusted),
			want:      map[Key]string{key(bob, 3): LevelDistrusted},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
		},
		{
			name:      "prompt answers undecided",
			undecided: []Device{dev(bob, 3, 3, LevelUndecided)},
			answer:    answerAll(LevelUndecided),
			want:      map[Key]string{key(bob, 3): LevelUndecided},
			asked:     []Device{dev(bob, 3, 3, LevelUndecided)},
		},
	})
}

func TestCustomDecide(t *testing.T) {
	mk := func(p Prompter) Policy {
		pol, err := Custom("new", map[string]Level{"new": Undecided, "ok": Trusted, "no": Distrusted}, p)
		if err != nil {
			t.Fatal(err)
		}
		return pol
	}
	runDecide(t, mk, []decideCase{
		{
			name:      "everything to prompt",
			undecided: []Device{dev(bob, 2, 2, "new"), dev(bob, 1, 1, "")},
			known:     []Device{dev(bob, 3, 3, "ok")},
			answer:    func([]Device) map[Key]string { return map[Key]string{key(bob, 1): "ok", key(bob, 2): "no"} },
			want:      map[Key]string{key(bob, 1): "ok", key(bob, 2): "no"},
			asked:     []Device{dev(bob, 1, 1, ""), dev(bob, 2, 2, "new")},
		},
	})
	// The ready vocabulary is unknown to a custom policy.
	r := &recorder{answer: answerAll(LevelTrusted)}
	_, err := mk(r.prompt).Decide(context.Background(), []Device{dev(bob, 1, 1, "new")}, nil)
	if !errors.Is(err, ErrDecisionFailed) || !errors.Is(err, ErrUnknownLevel) {
		t.Errorf("custom prompt answering %q: err = %v", LevelTrusted, err)
	}
}

func TestDecideErrors(t *testing.T) {
	errBoom := errors.New("user closed the dialog")
	und := []Device{dev(bob, 3, 3, LevelUndecided), dev(bob, 4, 4, LevelUndecided)}
	verified := []Device{dev(bob, 1, 1, LevelTrusted)}
	tests := []struct {
		name      string
		undecided []Device
		answer    func([]Device) map[Key]string
		err       error
		also      error // another error the result must wrap
		ctx       func() context.Context
	}{
		{name: "prompt error", err: errBoom, also: errBoom},
		{name: "unknown key", answer: func([]Device) map[Key]string { return map[Key]string{key(bob, 99): LevelTrusted} }},
		{name: "key of other JID", answer: func([]Device) map[Key]string { return map[Key]string{key(alice, 3): LevelTrusted} }},
		{name: "key of verified device", answer: func([]Device) map[Key]string { return map[Key]string{key(bob, 1): LevelDistrusted} }},
		{name: "unknown level", answer: answerAll("yes please"), also: ErrUnknownLevel},
		{name: "empty level", answer: answerAll(""), also: ErrUnknownLevel},
		{
			name: "one bad entry among good ones",
			answer: func([]Device) map[Key]string {
				return map[Key]string{key(bob, 3): LevelTrusted, key(bob, 4): "nope"}
			},
			also: ErrUnknownLevel,
		},
		{
			name: "canceled context",
			ctx: func() context.Context {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx
			},
			answer: answerAll(LevelTrusted),
			also:   context.Canceled,
		},
		{
			name:      "distrusted device passed as undecided",
			undecided: []Device{dev(bob, 3, 3, LevelDistrusted)},
			answer:    answerAll(LevelTrusted),
		},
		{
			name:      "unknown level passed as undecided",
			undecided: []Device{dev(bob, 3, 3, "??")},
			answer:    answerAll(LevelTrusted),
			also:      ErrUnknownLevel,
		},
	}
	for _, mk := range []func(Prompter) Policy{BTBV, TOFU, Manual} {
		for _, tt := range tests {
			r := &recorder{answer: tt.answer, err: tt.err}
			p := mk(r.prompt)
			t.Run(p.(fmt.Stringer).String()+"/"+tt.name, func(t *testing.T) {
				ctx := context.Background()
				if tt.ctx != nil {
					ctx = tt.ctx()
				}
				u := und
				if tt.undecided != nil {
					u = tt.undecided
				}
				got, err := p.Decide(ctx, u, verified)
				if !errors.Is(err, ErrDecisionFailed) {
					t.Fatalf("Decide = %v, %v; want ErrDecisionFailed", got, err)
				}
				if tt.also != nil && !errors.Is(err, tt.also) {
					t.Errorf("err = %v, want it to wrap %v", err, tt.also)
				}
				if got != nil {
					t.Errorf("Decide returned %v with an error", got)
				}
			})
		}
	}
}

func TestDecideNilContext(t *testing.T) {
	var seen context.Context
	p := Manual(func(ctx context.Context, und []Device) (map[Key]string, error) {
		seen = ctx
		return nil, nil
	})
	//lint:ignore SA1012 testing robustness against a nil context
	got, err := p.Decide(nil, []Device{dev(bob, 1, 1, LevelUndecided)}, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("Decide(nil ctx) = %v, %v", got, err)
	}
	if seen == nil {
		t.Errorf("prompt got a nil context")
	}
}

func TestDecideDoesNotModifyInput(t *testing.T) {
	und := []Device{dev(bob, 2, 2, LevelUndecided), dev(alice, 1, 1, LevelUndecided)}
	orig := slices.Clone(und)
	p := Manual(func(ctx context.Context, asked []Device) (map[Key]string, error) {
		asked[0].Level = "mutated" // the prompt gets a copy
		return nil, nil
	})
	if _, err := p.Decide(context.Background(), und, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(und, orig) {
		t.Errorf("Decide modified its input: %v", und)
	}
}

// TestDecideDeterministic checks that the prompt input and the error do not
// depend on input order or map iteration order.
func TestDecideDeterministic(t *testing.T) {
	und := []Device{
		dev(bob, 4, 4, LevelUndecided), dev(bob, 3, 3, LevelUndecided),
		dev(alice, 9, 9, LevelUndecided), dev(alice, 2, 2, LevelUndecided),
	}
	known := []Device{dev(bob, 1, 1, LevelTrusted), dev(alice, 1, 1, LevelTrusted)}
	var first []Device
	var firstErr string
	for i := range 50 {
		u := slices.Clone(und)
		// Rotate the input.
		u = append(u[i%len(u):], u[:i%len(u)]...)
		var asked []Device
		p := BTBV(func(ctx context.Context, d []Device) (map[Key]string, error) {
			asked = d
			return map[Key]string{key(bob, 3): "x", key(bob, 4): "y", key(alice, 2): "z", key(alice, 9): "w"}, nil
		})
		_, err := p.Decide(context.Background(), u, known)
		if err == nil {
			t.Fatal("want error")
		}
		if i == 0 {
			first, firstErr = asked, err.Error()
			if !slices.IsSortedFunc(asked, compareDevices) {
				t.Errorf("prompt input not sorted: %v", asked)
			}
			continue
		}
		if !slices.Equal(asked, first) {
			t.Fatalf("prompt input depends on input order:\n%v\n%v", asked, first)
		}
		if err.Error() != firstErr {
			t.Fatalf("error depends on order: %q vs %q", err, firstErr)
		}
	}
	if !strings.Contains(firstErr, key(alice, 2).String()) {
		t.Errorf("error should report the first bad key in order: %q", firstErr)
	}
}

func TestConcurrent(t *testing.T) {
	prompt := func(ctx context.Context, und []Device) (map[Key]string, error) {
		m := make(map[Key]string)
		for _, d := range und {
			m[d.Key()] = LevelDistrusted
		}
		return m, nil
	}
	custom, err := Custom("new", map[string]Level{"new": Undecided, "ok": Trusted}, func(ctx context.Context, und []Device) (map[Key]string, error) {
		return map[Key]string{und[0].Key(): "ok"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	policies := []Policy{BTBV(prompt), TOFU(prompt), Manual(prompt), custom}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				p := policies[(g+i)%len(policies)]
				jid := fmt.Sprintf("u%d@example.org", i%5)
				und := []Device{dev(jid, uint32(i), byte(i), p.Default())}
				known := []Device{dev(jid, 1000, 200, LevelTrusted)}
				got, err := p.Decide(context.Background(), und, known)
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) != 1 {
					t.Errorf("got %v", got)
					return
				}
				for _, name := range got {
					if _, err := p.Evaluate(name); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}
