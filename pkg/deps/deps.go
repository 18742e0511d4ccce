package deps
import (
 _ "github.com/cilium/ebpf"
 _ "github.com/miekg/dns"
 _ "github.com/spf13/cobra"
 _ "github.com/spf13/cobra/doc"
 _ "github.com/hashicorp/golang-lru/v2"
 _ "gopkg.in/yaml.v3"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "golang.org/x/sys/unix"
 _ "golang.org/x/net/http2"
 _ "golang.org/x/sync/singleflight"
)
