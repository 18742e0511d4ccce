package testutil

import (
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
)

// GitRepo creates a bare repository root/name (e.g. "demo.git") holding one
// commit with a file README whose content is content, ready to be served by
// GitHTTPBackend. It needs the git binary.
func GitRepo(root, name, content string) error {
	gitBin, err := exec.LookPath("git")
	if err != nil {
		return fmt.Errorf("git repo: %w", err)
	}
	work := filepath.Join(root, name+".work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(work, "README"), []byte(content), 0o644); err != nil {
		return err
	}
	env := append(os.Environ(), "GIT_AUTHOR_NAME=sluice", "GIT_AUTHOR_EMAIL=sluice@example.test",
		"GIT_COMMITTER_NAME=sluice", "GIT_COMMITTER_EMAIL=sluice@example.test",
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	for _, args := range [][]string{
		{"init", "-q", "-b", "main", work},
		{"-C", work, "add", "README"},
		{"-C", work, "commit", "-q", "-m", "initial"},
		{"clone", "-q", "--bare", work, filepath.Join(root, name)},
	} {
		cmd := exec.Command(gitBin, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %v: %w: %s", args, err, out)
		}
	}
	return os.RemoveAll(work)
}

// GitHTTPBackend serves the repositories below root with `git http-backend`
// (smart HTTP, read-only) through CGI: mount it as the handler of an
// HTTPSServer and clone https://HOST:PORT/NAME.git.
func GitHTTPBackend(root string) (http.Handler, error) {
	gitBin, err := exec.LookPath("git")
	if err != nil {
		return nil, fmt.Errorf("git http-backend: %w", err)
	}
	return &cgi.Handler{
		Path: gitBin,
		Args: []string{"http-backend"},
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1"},
	}, nil
}
