package daemon

import "testing"

func TestSandboxClassicalKEXEnv(t *testing.T) {
	for _, tt := range []struct {
		val  string
		want bool
	}{{"", false}, {"0", false}, {"yes", false}, {"1", true}} {
		t.Setenv("SLUICE_SANDBOX_CLASSICAL_KEX", tt.val)
		if got := sandboxClassicalKEX(); got != tt.want {
			t.Errorf("SLUICE_SANDBOX_CLASSICAL_KEX=%q: %v, want %v", tt.val, got, tt.want)
		}
	}
}
