package main

import (
	"fmt"
	"net/http"
	"strings"
)

// explainHeaders parses `policy explain --header "Name: value"` flags.
func explainHeaders(hs []string) (http.Header, error) {
	if len(hs) == 0 {
		return nil, nil
	}
	h := http.Header{}
	for _, s := range hs {
		k, v, ok := strings.Cut(s, ":")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("--header %q: expect \"Name: value\"", s)
		}
		h.Add(k, strings.TrimSpace(v))
	}
	return h, nil
}
