package trust

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// readyLevels is the vocabulary shared by BTBV, TOFU and Manual.
var readyLevels = map[string]Level{
	LevelTrusted:        Trusted,
	LevelBlindlyTrusted: Trusted,
	LevelFirstUse:       Trusted,
	LevelUndecided:      Undecided,
	LevelDistrusted:     Distrusted,
}

// policy is the implementation behind every Policy of this package. It is
// never modified after construction.
type policy struct {
	name   string
	def    string
	levels map[string]Level // never written after construction
	// auto reports whether the undecided devices of one JID are decided
	// automatically as autoName. devs holds every known and undecided device
	// of that JID. nil means nothing is decided automatically.
	auto     func(p *policy, devs []Device) bool
	autoName string
	prompt   Prompter
}

// String returns the policy name ("btbv", "tofu", "manual" or "custom").
func (p *policy) String() string { return p.name }

func (p *policy) Default() string { return p.def }

func (p *policy) Evaluate(name string) (Level, error) {
	l, ok := p.levels[name]
	if !ok {
		return Undecided, fmt.Errorf("%w: %q", ErrUnknownLevel, name)
	}
	return l, nil
}

// levelOf evaluates the stored level of d, reading an empty name as the
// default.
func (p *policy) levelOf(d Device) (string, Level, error) {
	name := d.Level
	if name == "" {
		name = p.def
	}
	l, err := p.Evaluate(name)
	return name, l, err
}

func (p *policy) Decide(ctx context.Context, undecided []Device, known []Device) (map[Key]string, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	result := make(map[Key]string)
	if len(undecided) == 0 {
		return result, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecisionFailed, err)
	}

	und := slices.Clone(undecided)
	slices.SortFunc(und, compareDevices)
	// Refuse to decide on a device that is not undecided: deciding it
	// automatically could, for example, blindly trust a distrusted key.
	for _, d := range und {
		name, l, err := p.levelOf(d)
		if err != nil {
			return nil, fmt.Errorf("%w: device %d of %s: %w", ErrDecisionFailed, d.DeviceID, d.Key(), err)
		}
		if l != Undecided {
			return nil, fmt.Errorf("%w: device %d of %s passed as undecided has level %q (%s)",
				ErrDecisionFailed, d.DeviceID, d.Key(), name, l)
		}
	}

	var remaining []Device
	if p.auto == nil {
		remaining = und
	} else {
		// Group every known and undecided device by JID; only JIDs with
		// undecided devices matter.
		byJID := make(map[string][]Device)
		for _, d := range und {
			byJID[d.JID] = append(byJID[d.JID], d)
		}
		undCount := make(map[string]int, len(byJID))
		for jid, ds := range byJID {
			undCount[jid] = len(ds)
		}
		for _, d := range known {
			if _, ok := byJID[d.JID]; ok {
				byJID[d.JID] = append(byJID[d.JID], d)
			}
		}
		for _, jid := range slices.Sorted(maps.Keys(byJID)) {
			devs := byJID[jid]
			own := devs[:undCount[jid]]
			if p.auto(p, devs) {
				for _, d := range own {
					result[d.Key()] = p.autoName
				}
				continue
			}
			remaining = append(remaining, own...)
		}
	}

	if len(remaining) == 0 || p.prompt == nil {
		return result, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecisionFailed, err)
	}
	asked := make(map[Key]bool, len(remaining))
	for _, d := range remaining {
		asked[d.Key()] = true
	}
	answer, err := p.prompt(ctx, slices.Clone(remaining))
	if err != nil {
		return nil, fmt.Errorf("%w: prompt: %w", ErrDecisionFailed, err)
	}
	// Validate in a fixed order so the reported error is deterministic.
	keys := slices.SortedFunc(maps.Keys(answer), compareKeys)
	for _, k := range keys {
		if !asked[k] {
			return nil, fmt.Errorf("%w: prompt decided on %s, which it was not asked about", ErrDecisionFailed, k)
		}
		if _, err := p.Evaluate(answer[k]); err != nil {
			return nil, fmt.Errorf("%w: prompt decision for %s: %w", ErrDecisionFailed, k, err)
		}
	}
	for _, k := range keys {
		result[k] = answer[k]
	}
	return result, nil
}

// BTBV returns the "blind trust before verification" policy, the default of
// Conversations and of python-omemo's BTBV example.
//
// For each JID with undecided devices: as long as no identity key of that JID
// has been verified manually (stored as LevelTrusted), its undecided keys are
// trusted blindly (LevelBlindlyTrusted). Once any key of the JID is verified,
// new keys of that JID are no longer trusted blindly and go to prompt.
// Distrusted keys, blindly trusted keys and keys trusted on first use do not
// count as verification and do not stop blind trust (as in Conversations;
// python-omemo's example also prompts when a distrusted key exists). A known
// device with a level name the policy does not know also sends the JID to
// prompt, since it cannot be shown to be unverified.
//
// Security: BTBV gives no protection before verification. An attacker who
// adds a device (identity key) to a contact's account, or who controls the
// contact's server, before the user verified any of the contact's keys is
// trusted blindly and can read new messages. After the user verified one key
// of the contact, keys added later are not trusted without a manual decision.
//
// LevelTrusted, LevelBlindlyTrusted and LevelFirstUse map to Trusted;
// LevelUndecided (the default) to Undecided; LevelDistrusted to Distrusted.
// prompt may be nil; then devices that are not trusted blindly stay
// undecided.
func BTBV(prompt Prompter) Policy {
	return &policy{
		name:     "btbv",
		def:      LevelUndecided,
		levels:   readyLevels,
		auto:     btbvAuto,
		autoName: LevelBlindlyTrusted,
		prompt:   prompt,
	}
}

func btbvAuto(p *policy, devs []Device) bool {
	for _, d := range devs {
		name, _, err := p.levelOf(d)
		if err != nil || name == LevelTrusted {
			return false
		}
	}
	return true
}

// TOFU returns the "trust on first use" policy.
//
// For each JID with undecided devices: if no identity key of that JID was
// ever decided on (every known key evaluates to Undecided), all its undecided
// keys are trusted as LevelFirstUse. If any key of the JID was decided before
// (trusted, blindly trusted, trusted on first use or distrusted), new keys go
// to prompt. A known device with a level name the policy does not know counts
// as decided.
//
// Security: the first contact is not protected: whoever controls the
// contact's keys at first use (for example a hostile server) is trusted.
// Afterwards every key added to the contact's account needs a manual
// decision. Resetting all of a contact's keys to LevelUndecided makes the
// next encryption a first use again.
//
// The level names map as for BTBV. prompt may be nil; then new keys after the
// first use stay undecided.
func TOFU(prompt Prompter) Policy {
	return &policy{
		name:     "tofu",
		def:      LevelUndecided,
		levels:   readyLevels,
		auto:     tofuAuto,
		autoName: LevelFirstUse,
		prompt:   prompt,
	}
}

func tofuAuto(p *policy, devs []Device) bool {
	for _, d := range devs {
		_, l, err := p.levelOf(d)
		if err != nil || l != Undecided {
			return false
		}
	}
	return true
}

// Manual returns a policy that decides nothing automatically: every undecided
// device goes to prompt.
//
// Security: no key is ever trusted without a decision by the prompt (the
// user), so an added device cannot receive messages unnoticed; the strength
// of the protection is that of the user's verification.
//
// The level names map as for BTBV, so keys decided under BTBV or TOFU keep
// their meaning. prompt may be nil; then nothing is decided and encryption to
// undecided devices fails.
func Manual(prompt Prompter) Policy {
	return &policy{
		name:   "manual",
		def:    LevelUndecided,
		levels: readyLevels,
		prompt: prompt,
	}
}

// Custom returns a policy with the application's own vocabulary: levels maps
// every custom level name to its core level, and defaultName, the level of
// keys nobody decided on yet, must be one of them and map to Undecided.
// Nothing is decided automatically: every undecided device goes to prompt
// (which may be nil), and prompt may only answer with names from levels.
//
// levels is copied; changing it afterwards does not affect the policy. Empty
// names and levels other than Undecided, Trusted and Distrusted are rejected
// with ErrInvalidPolicy.
//
// Security: as for Manual, nothing is trusted without a decision by prompt.
func Custom(defaultName string, levels map[string]Level, prompt Prompter) (Policy, error) {
	if len(levels) == 0 {
		return nil, fmt.Errorf("%w: no levels", ErrInvalidPolicy)
	}
	for _, name := range slices.Sorted(maps.Keys(levels)) {
		if name == "" {
			return nil, fmt.Errorf("%w: empty level name", ErrInvalidPolicy)
		}
		if l := levels[name]; !l.valid() {
			return nil, fmt.Errorf("%w: level %q maps to invalid %s", ErrInvalidPolicy, name, l)
		}
	}
	l, ok := levels[defaultName]
	if !ok {
		return nil, fmt.Errorf("%w: default level %q is not in the mapping", ErrInvalidPolicy, defaultName)
	}
	if l != Undecided {
		return nil, fmt.Errorf("%w: default level %q maps to %s, not undecided", ErrInvalidPolicy, defaultName, l)
	}
	return &policy{
		name:   "custom",
		def:    defaultName,
		levels: maps.Clone(levels),
		prompt: prompt,
	}, nil
}

// PolicyNames returns the names ParsePolicy accepts, the default ("btbv")
// first.
func PolicyNames() []string { return []string{"btbv", "tofu", "manual"} }

// ParsePolicy returns the ready policy called name: "btbv" (BTBV), "tofu"
// (TOFU) or "manual" (Manual). Case and surrounding space are ignored. Other
// names return an error wrapping ErrUnknownPolicy.
func ParsePolicy(name string, prompt Prompter) (Policy, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "btbv":
		return BTBV(prompt), nil
	case "tofu":
		return TOFU(prompt), nil
	case "manual":
		return Manual(prompt), nil
	}
	return nil, fmt.Errorf("%w: %q (want one of %s)", ErrUnknownPolicy, name, strings.Join(PolicyNames(), ", "))
}
