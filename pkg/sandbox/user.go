package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The per-sandbox uids of `sluice run` without --user (and without sudo):
// UIDBase .. UIDBase+UIDCount-1, gid equal to the uid, no supplementary
// groups, no passwd entry. A uid is held by an flock on
// STATEDIR/uids/UID.lock for the life of the sluice process, so two live
// sandboxes never share one.
const (
	UIDBase  = 2_100_000_000
	UIDCount = 65536
)

// Identity is who the command runs as.
type Identity struct {
	UID, GID uint32
	Groups   []uint32
	Name     string // "" when the uid has no passwd entry
	Home     string // from passwd; "" when none
	// Allocated is true for a uid taken from the per-sandbox range.
	Allocated bool

	lock *os.File
}

// Release frees an allocated uid (closing its lock). Safe to call more
// than once and on any Identity.
func (id *Identity) Release() {
	if id != nil && id.lock != nil {
		// Unlink while still holding the lock: a process that opened the
		// old file notices (its path no longer names the inode) and retries.
		os.Remove(id.lock.Name())
		id.lock.Close()
		id.lock = nil
	}
}

// ResolveUser decides who runs the command. spec is --user: "" (the user
// behind sudo when SUDO_UID is set and not 0, else an allocated uid),
// "root", a name, "UID" or "UID:GID". getenv reads sluice's environment.
func ResolveUser(spec, stateDir string, getenv func(string) string) (*Identity, error) {
	if spec == "" {
		if s := getenv("SUDO_UID"); s != "" && s != "0" {
			uid, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("SUDO_UID %q is not a number", s)
			}
			id := fromPasswd(uint32(uid))
			if g := getenv("SUDO_GID"); g != "" {
				if gid, err := strconv.ParseUint(g, 10, 32); err == nil {
					id.GID = uint32(gid)
				}
			}
			return id, nil
		}
		return allocateUID(stateDir)
	}
	us, gs, hasG := strings.Cut(spec, ":")
	var id *Identity
	if n, err := strconv.ParseUint(us, 10, 32); err == nil {
		id = fromPasswd(uint32(n))
	} else {
		u, err := user.Lookup(us)
		if err != nil {
			return nil, fmt.Errorf("--user %q: %w", spec, err)
		}
		n, _ := strconv.ParseUint(u.Uid, 10, 32)
		id = fromPasswd(uint32(n))
	}
	if hasG {
		g, err := strconv.ParseUint(gs, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--user %q: group must be numeric", spec)
		}
		id.GID = uint32(g)
	}
	return id, nil
}

// fromPasswd fills name, primary group, groups and home from the passwd
// and group databases; a uid without an entry gets gid = uid.
func fromPasswd(uid uint32) *Identity {
	id := &Identity{UID: uid, GID: uid}
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return id
	}
	id.Name, id.Home = u.Username, u.HomeDir
	if g, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
		id.GID = uint32(g)
	}
	if gids, err := u.GroupIds(); err == nil {
		for _, s := range gids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				id.Groups = append(id.Groups, uint32(g))
			}
		}
	}
	return id
}

// allocateUID takes the first free uid of the range, starting at an offset
// derived from our pid so that concurrent runs rarely contend.
func allocateUID(stateDir string) (*Identity, error) {
	dir := filepath.Join(stateDir, "uids")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the uid lock directory: %w", err)
	}
	start := os.Getpid() % UIDCount
	for i := 0; i < UIDCount; i++ {
		uid := uint32(UIDBase + (start+i)%UIDCount)
		f, err := os.OpenFile(filepath.Join(dir, strconv.FormatUint(uint64(uid), 10)+".lock"),
			os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("allocating a sandbox uid: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				continue
			}
			return nil, fmt.Errorf("allocating a sandbox uid: %w", err)
		}
		// The holder before us may have unlinked the file between our
		// open and our lock: only a lock on the file the path names counts.
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(f.Name(), &named) != nil ||
			held.Ino != named.Ino || held.Dev != named.Dev {
			f.Close()
			i-- // the same uid again
			continue
		}
		return &Identity{UID: uid, GID: uid, Allocated: true, lock: f}, nil
	}
	return nil, fmt.Errorf("no free sandbox uid in %d..%d", UIDBase, UIDBase+UIDCount-1)
}

// WritableHome reports whether dir exists and id can write to it (owner
// with the write bit, or root).
func (id *Identity) WritableHome(dir string) bool {
	if dir == "" {
		return false
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false
	}
	if id.UID == 0 {
		return true
	}
	return st.Uid == id.UID && st.Mode&0o200 != 0
}

// MakeHome creates parent/home owned by id, mode 0700, for a user whose
// home is missing or not writable. It lives as long as parent (removed
// with the sandbox's temporary directory).
func (id *Identity) MakeHome(parent string) (string, error) {
	h := filepath.Join(parent, "home")
	if err := os.Mkdir(h, 0o700); err != nil {
		return "", fmt.Errorf("creating the sandbox home: %w", err)
	}
	if err := os.Chown(h, int(id.UID), int(id.GID)); err != nil {
		return "", fmt.Errorf("creating the sandbox home: %w", err)
	}
	return h, nil
}

// CanEnter reports whether id may search every directory on the way to dir
// (and dir itself): the command starts there, or in its home if not.
func (id *Identity) CanEnter(dir string) bool {
	if id.UID == 0 {
		return true
	}
	if !filepath.IsAbs(dir) {
		return false
	}
	p := dir
	for {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return false
		}
		var bit uint32 = 0o001
		switch {
		case st.Uid == id.UID:
			bit = 0o100
		case st.Gid == id.GID || containsGID(id.Groups, st.Gid):
			bit = 0o010
		}
		if st.Mode&bit == 0 {
			return false
		}
		if p == "/" {
			return true
		}
		p = filepath.Dir(p)
	}
}

func containsGID(gs []uint32, g uint32) bool {
	for _, x := range gs {
		if x == g {
			return true
		}
	}
	return false
}
