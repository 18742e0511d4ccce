package kube

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
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
		w.Header().Set("Content-Type", "application/json")
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

func newTestClient(t *testing.T, srv *httptest.Server, files string) kubernetes.Interface {
	t.Helper()
	ca, tok, _ := strings.Cut(files, "|")
	c, err := NewClientset(srv.URL, ca, tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClientsetListsNodePods: the clientset sends the token and the node's
// field selector, and decodes the recorded list.
func TestClientsetListsNodePods(t *testing.T) {
	srv, files, seen := fakeAPIServer(t, "tok-1", func(string) (int, string) { return http.StatusOK, "" })
	c := newTestClient(t, srv, files)
	list, err := c.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 2 || list.ResourceVersion != "200" || list.Items[0].Name != "agent-7f9c" {
		t.Fatalf("list: rv %s, %d pods", list.ResourceVersion, len(list.Items))
	}
	p, err := fromAPI(&list.Items[0])
	if err != nil || p.Metadata.UID != "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa" || p.Metadata.Annotations[AnnotationPolicy] != "agent" || runningContainer(&p) == "" {
		t.Fatalf("fromAPI: %+v, %v", p, err)
	}
	if len(*seen) == 0 {
		t.Fatal("no request seen")
	}
}

func TestClientsetBadToken(t *testing.T) {
	srv, files, _ := fakeAPIServer(t, "tok", func(string) (int, string) { return 200, "" })
	ca, _, _ := strings.Cut(files, "|")
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("wrong"), 0o600)
	c, err := NewClientset(srv.URL, ca, tok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}); !apierrors.IsUnauthorized(err) {
		t.Fatalf("err = %v, want 401 Unauthorized", err)
	}
}

func TestClientRefusesUntrustedServer(t *testing.T) {
	srv, _, _ := fakeAPIServer(t, "tok", func(string) (int, string) { return 200, "" })
	c, err := NewClientset(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v, want a certificate error", err)
	}
}
