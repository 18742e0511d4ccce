package daemon

import (
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// ParseLabels turns repeated `--label k=v` flags into a map; a repeated key
// keeps the last value.
func ParseLabels(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("--label %q: expect key=value, for example --label user=alice", f)
		}
		out[k] = v
	}
	return out, CheckLabels(out)
}

// CheckLabels validates labels: at most audit.MaxLabels, each
// audit.ValidLabel.
func CheckLabels(labels map[string]string) error {
	if len(labels) > audit.MaxLabels {
		return fmt.Errorf("%d labels: at most %d", len(labels), audit.MaxLabels)
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !audit.ValidLabel(k, labels[k]) {
			return fmt.Errorf("label %q: the key must be 1-%d characters from A-Z a-z 0-9 . _ - / starting with a letter or digit, the value at most %d bytes without control characters",
				k, audit.MaxLabelKeyLen, audit.MaxLabelValueLen)
		}
	}
	return nil
}

// labelSet holds a sandbox's labels; replaced whole, read per event.
type labelSet struct {
	p atomic.Pointer[map[string]string]
}

func (l *labelSet) set(labels map[string]string) {
	if len(labels) == 0 {
		l.p.Store(nil)
		return
	}
	m := maps.Clone(labels)
	l.p.Store(&m)
}

// get returns the labels (nil without); the map must not be modified.
func (l *labelSet) get() map[string]string {
	if m := l.p.Load(); m != nil {
		return *m
	}
	return nil
}

// labeledEmitter puts a sandbox's labels on each of its audit events.
type labeledEmitter struct {
	next   audit.Emitter
	labels *labelSet
}

var _ audit.Emitter = labeledEmitter{}

func (e labeledEmitter) Emit(ev audit.Event) {
	if ev.Labels == nil {
		ev.Labels = e.labels.get()
	}
	e.next.Emit(ev)
}

// labeler is what a credential callback client offers to send a sandbox's
// labels in its request bodies (*secrets.Callbacks).
type labeler interface {
	SetLabels(sandbox string, labels map[string]string)
}

// forgetter drops what a component caches for a sandbox (on detach).
type forgetter interface {
	Forget(sandbox string)
}
