package policy

import (
	"strconv"
	"strings"
)

// headerTypes maps each YAML word of a header's `type` to its HeaderType,
// in the order the docs list them. It is the only spelling of these words:
// the parser and HeaderType.String (which explain prints) read it, and
// TestSchemaHeaderTypes keeps the enum of schema.json equal to it.
var headerTypes = []struct {
	word string
	typ  HeaderType
}{
	{"secret", HeaderSecret},
	{"plaintext", HeaderPlaintext},
	{"opaque", HeaderOpaque},
}

// parseHeaderType returns the HeaderType of a YAML word.
func parseHeaderType(word string) (HeaderType, bool) {
	for _, h := range headerTypes {
		if h.word == word {
			return h.typ, true
		}
	}
	return 0, false
}

// headerTypeWords lists the legal words for error messages: "a, b, c".
func headerTypeWords() string {
	words := make([]string, len(headerTypes))
	for i, h := range headerTypes {
		words[i] = h.word
	}
	return strings.Join(words, ", ")
}

// String returns the YAML word of t.
func (t HeaderType) String() string {
	for _, h := range headerTypes {
		if h.typ == t {
			return h.word
		}
	}
	return "HeaderType(" + strconv.Itoa(int(t)) + ")"
}
