package testutil

// StartDNSTTL is StartDNS with every answer's TTL (and the negative-answer
// SOA's) set to ttl seconds instead of 300, for tests of caching and
// address rotation.
func StartDNSTTL(records map[string][]string, ttl uint32) (*DNSServer, error) {
	s, err := StartDNS(records)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.ttl = ttl
	s.mu.Unlock()
	return s, nil
}
