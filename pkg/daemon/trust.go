package daemon

// untrust removes the sandbox CA bundle mounted into the sandbox's
// container (see trust_linux.go); d.mu is held.
func (d *Daemon) untrust(name string) {}
