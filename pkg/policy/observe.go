package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// ObservationOf turns an audit event into an Observation to replay; false
// for events that record no DNS query, connection or HTTP request.
func ObservationOf(ev audit.Event) (Observation, bool) {
	var port uint16
	var addr netip.Addr
	if ap, err := netip.ParseAddrPort(ev.Dst); err == nil {
		addr, port = ap.Addr(), ap.Port()
	}
	switch ev.Kind {
	case audit.KindDNS:
		if ev.QName == "" {
			return Observation{}, false
		}
		return Observation{Kind: "dns", Host: strings.TrimSuffix(ev.QName, ".")}, true
	case audit.KindConn:
		host := ev.SNI
		if host == "" {
			host = ev.Host
		}
		if host == "" && !addr.IsValid() {
			return Observation{}, false
		}
		return Observation{Kind: "conn", Host: host, Addr: addr, Port: port, Exe: ev.Exe}, true
	case audit.KindHTTP:
		if ev.Host == "" || ev.Method == "" {
			return Observation{}, false
		}
		if port == 0 {
			port = 443
		}
		path := ev.Path
		if i := strings.IndexAny(path, "?#"); i >= 0 {
			path = path[:i]
		}
		return Observation{Kind: "http", Host: ev.Host, Port: port, Method: ev.Method, Path: path, Exe: ev.Exe}, true
	}
	return Observation{}, false
}

// Target names what o reached: the query name, HOST port N, or
// METHOD HOSTPATH port N.
func (o Observation) Target() string {
	switch o.Kind {
	case "dns":
		return o.Host
	case "conn":
		h := o.Host
		if h == "" {
			h = o.Addr.String()
		}
		return fmt.Sprintf("%s port %d", h, o.Port)
	}
	return fmt.Sprintf("%s %s%s port %d", o.Method, o.Host, o.Path, o.Port)
}
