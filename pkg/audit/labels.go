package audit

import "strings"

// Limits of a sandbox's labels (Event.Labels).
const (
	MaxLabels        = 64
	MaxLabelKeyLen   = 253
	MaxLabelValueLen = 1024
)

// ValidLabel reports whether k=v may be a sandbox label: a key of 1-253
// characters from A-Z a-z 0-9 . _ - / starting with a letter or digit
// (Kubernetes label keys such as sluice.dev/user), a value of at most 1024
// bytes without control characters.
func ValidLabel(k, v string) bool {
	if k == "" || len(k) > MaxLabelKeyLen || len(v) > MaxLabelValueLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-' || c == '/'):
		default:
			return false
		}
	}
	return strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) < 0
}
