#!/usr/bin/env bash
# Validate the manifests without a cluster:
#  1. kubectl kustomize renders them, and `kubectl apply --dry-run=client`
#     accepts them against a local discovery stub (fake-discovery.py), when
#     kubectl is installed;
#  2. every document is decoded strictly into the official Kubernetes API
#     types (k8s.io/api, pinned): an unknown field, a misspelt key or a
#     value of the wrong type fails (the schema check kubectl would do with
#     a real API server's OpenAPI document);
#  3. go test ./pkg/kube -run Manifests: references, RBAC, host mounts, the
#     config and the policies (see pkg/kube/manifests_test.go).
# It needs the Go module proxy (or a warm module cache) for step 2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
GO=${GO:-go}
K8S_API=v0.37.2
K8S_YAML=v1.6.0

files=("$here"/*.yaml)
if command -v kubectl >/dev/null; then
	echo "== kubectl kustomize"
	kubectl kustomize "$here" >/dev/null
	echo "ok"

	echo "== kubectl apply --dry-run=client (against a local discovery stub)"
	stub_dir=$(mktemp -d)
	python3 "$here/fake-discovery.py" "$stub_dir/requests.log" >"$stub_dir/port" &
	stub=$!
	for _ in $(seq 50); do [ -s "$stub_dir/port" ] && break; sleep 0.1; done
	cat >"$stub_dir/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: stub, cluster: {server: "http://127.0.0.1:$(cat "$stub_dir/port")"}}]
users: [{name: stub, user: {}}]
contexts: [{name: stub, context: {cluster: stub, user: stub, namespace: default}}]
current-context: stub
KUBECONFIG
	rc=0
	# --validate=false: the stub serves no OpenAPI schema (the strict decode
	# below is the schema check).
	KUBECONFIG="$stub_dir/kubeconfig" kubectl apply --dry-run=client --validate=false -k "$here" || rc=$?
	KUBECONFIG="$stub_dir/kubeconfig" kubectl apply --dry-run=client --validate=false -f "$here/example-pod.yaml" || rc=$?
	kill "$stub" 2>/dev/null || true
	wait "$stub" 2>/dev/null || true
	rm -rf "$stub_dir"
	[ "$rc" = 0 ] || { echo "kubectl apply --dry-run=client failed" >&2; exit 1; }
fi

echo "== strict decode into k8s.io/api $K8S_API types"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/go.mod" <<MOD
module sluice-manifest-check

go 1.24
MOD
cat >"$tmp/main.go" <<'GO'
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

func object(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "v1/Secret":
		return &corev1.Secret{}
	case "v1/Pod":
		return &corev1.Pod{}
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}
	}
	return nil
}

func main() {
	bad := 0
	for _, f := range os.Args[1:] {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		rd := utilyaml.NewYAMLReader(bufioReader(data))
		for i := 0; ; i++ {
			doc, err := rd.Read()
			if err == io.EOF {
				break
			}
			if err != nil {
				fmt.Printf("%s: %v\n", f, err)
				bad++
				break
			}
			if len(strings.TrimSpace(string(doc))) == 0 {
				continue
			}
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				fmt.Printf("%s[%d]: %v\n", f, i, err)
				bad++
				continue
			}
			o := object(meta.APIVersion, meta.Kind)
			if o == nil {
				fmt.Printf("%s[%d]: unknown %s %s\n", f, i, meta.APIVersion, meta.Kind)
				bad++
				continue
			}
			if err := yaml.UnmarshalStrict(doc, o); err != nil {
				fmt.Printf("%s: %s/%s: %v\n", filepath.Base(f), meta.Kind, meta.Metadata.Name, err)
				bad++
				continue
			}
			fmt.Printf("ok  %-20s %s/%s\n", filepath.Base(f), meta.Kind, meta.Metadata.Name)
		}
	}
	if bad > 0 {
		fmt.Printf("%d invalid document(s)\n", bad)
		os.Exit(1)
	}
}
GO
cat >>"$tmp/main.go" <<'GO'

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
GO
sed -i 's#^\t"bytes"#\t"bufio"\n\t"bytes"#' "$tmp/main.go"
(cd "$tmp" && GOFLAGS=-mod=mod $GO get "k8s.io/api@$K8S_API" "k8s.io/apimachinery@$K8S_API" "sigs.k8s.io/yaml@$K8S_YAML" >/dev/null 2>&1 \
	&& GOFLAGS=-mod=mod $GO run . "${files[@]}")

echo "== go test ./pkg/kube -run 'Manifests|PackagedConfig'"
(cd "$repo" && $GO test -count=1 -run 'Manifests|PackagedConfig' ./pkg/kube)
