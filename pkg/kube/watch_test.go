package kube

import (
	"bufio"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fakeAPIServer serves GET /api/v1/pods (list and watch) over TLS on
// loopback, checking the bearer token and the node field selector.
func fakeAPIServer(t *testing.T, token string, watchBody func(rv string) (int, string)) (*httptest.Server, string, *[]string) {
	t.Helper()
	list, err := os.ReadFile("../../testdata/kubernetes/pod-list.json")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.RawQuery)
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"kind":"Status","message":"Unauthorized"}`)
			return
		}
		if r.URL.Path != "/api/v1/pods" || r.URL.Query().Get("fieldSelector") != "spec.nodeName=node-a" {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"message":"unexpected %s"}`, r.URL)
			return
		}
		if r.URL.Query().Get("watch") == "" {
			w.Write(list)
			return
		}
		code, body := watchBody(r.URL.Query().Get("resourceVersion"))
		w.WriteHeader(code)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, ca + "|" + tok, &seen
}

func newTestClient(t *testing.T, srv *httptest.Server, files string) *Client {
	t.Helper()
	ca, tok, _ := strings.Cut(files, "|")
	c, err := NewClient(srv.URL, ca, tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestListAndWatch(t *testing.T) {
	events, err := os.ReadFile(eventsFile)
	if err != nil {
		t.Fatal(err)
	}
	srv, files, _ := fakeAPIServer(t, "tok-1", func(rv string) (int, string) {
		if rv != "200" {
			return http.StatusBadRequest, "{}"
		}
		return http.StatusOK, string(events)
	})
	c := newTestClient(t, srv, files)
	pods, rv, err := c.ListPods(context.Background(), "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 2 || rv != "200" || pods[0].Metadata.Name != "agent-7f9c" {
		t.Fatalf("list: rv %s, %d pods", rv, len(pods))
	}
	var n int
	r := NewReconciler("node-a")
	var ops []string
	last, err := c.WatchPods(context.Background(), "node-a", rv, func(ev Event) error {
		n++
		for _, a := range r.Handle(ev) {
			ops = append(ops, string(a.Op))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(events)))
	lines := 0
	for sc.Scan() {
		lines++
	}
	if n != lines || last != "116" {
		t.Fatalf("watched %d of %d events, last rv %q", n, lines, last)
	}
	if strings.Join(ops, ",") != "attach,attach,attach,detach,attach,detach,detach,attach,detach" {
		t.Fatalf("ops %v", ops)
	}
}

func TestWatchErrors(t *testing.T) {
	tests := []struct {
		name    string
		token   string
		code    int
		body    string
		wantErr string
		is      error
	}{
		{name: "expired in stream", token: "tok", code: 200, body: `{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version"}}` + "\n", is: ErrExpired},
		{name: "expired status", token: "tok", code: 410, body: `{}`, is: ErrExpired},
		{name: "other error event", token: "tok", code: 200, body: `{"type":"ERROR","object":{"code":500,"message":"etcd down"}}` + "\n", wantErr: "watch error 500: etcd down"},
		{name: "garbage", token: "tok", code: 200, body: "not json\n", wantErr: "malformed watch event"},
		{name: "bad token", token: "wrong", code: 200, body: "", wantErr: "401 Unauthorized: Unauthorized"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, files, _ := fakeAPIServer(t, "tok", func(string) (int, string) { return tt.code, tt.body })
			ca, _, _ := strings.Cut(files, "|")
			tok := filepath.Join(t.TempDir(), "token")
			os.WriteFile(tok, []byte(tt.token), 0o600)
			c, err := NewClient(srv.URL, ca, tok)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.WatchPods(context.Background(), "node-a", "1", func(Event) error { return nil })
			if tt.is != nil {
				if !errors.Is(err, tt.is) {
					t.Fatalf("err = %v, want %v", err, tt.is)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestClientRefusesUntrustedServer(t *testing.T) {
	srv, _, _ := fakeAPIServer(t, "tok", func(string) (int, string) { return 200, "" })
	c, err := NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ListPods(context.Background(), "node-a"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v, want a certificate error", err)
	}
}
