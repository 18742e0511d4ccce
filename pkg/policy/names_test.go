package policy

import (
	"encoding/json"
	"slices"
	"testing"
)

// TestSchemaHeaderTypes: schema.json's enum of header types is the table
// the parser and explain read, in the same order.
func TestSchemaHeaderTypes(t *testing.T) {
	t.Parallel()
	var s struct {
		Defs struct {
			Header struct {
				Properties struct {
					Type struct {
						Enum []string `json:"enum"`
					} `json:"type"`
				} `json:"properties"`
			} `json:"header"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(Schema, &s); err != nil {
		t.Fatal(err)
	}
	var words []string
	for _, h := range headerTypes {
		words = append(words, h.word)
		if got, ok := parseHeaderType(h.word); !ok || got != h.typ || got.String() != h.word {
			t.Errorf("%s: parsed %v (%v), printed %q", h.word, got, ok, got.String())
		}
	}
	if got := s.Defs.Header.Properties.Type.Enum; !slices.Equal(got, words) {
		t.Errorf("schema.json header type enum %v, want %v", got, words)
	}
	if _, ok := parseHeaderType("Secret"); ok {
		t.Error(`"Secret" parsed: the words are lower case`)
	}
}
