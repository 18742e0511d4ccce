package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/defaults"
)

// rootOptions holds the flags every command shares.
type rootOptions struct {
	socket string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// exitError carries a specific exit status out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func newRootCmd(o *rootOptions) *cobra.Command {
	root := &cobra.Command{
		Use:           "sluice",
		Short:         "Egress enforcement and credential injection for sandboxed processes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(o.stdin)
	root.SetOut(o.stdout)
	root.SetErr(o.stderr)
	def := defaults.FromEnv(defaults.EnvSocket, defaults.Socket)
	root.PersistentFlags().StringVar(&o.socket, "socket", def, "daemon control socket (env "+defaults.EnvSocket+")")
	// Every command, one constructor each (help lists them sorted).
	root.AddCommand(
		newRunCmd(o),
		newDaemonCmd(o),
		newAttachCmd(o),
		newDetachCmd(o),
		newListCmd(o),
		newBlockedCmd(o),
		newLogsCmd(o),
		newPolicyCmd(o),
		newCACmd(o),
		newSecretCmd(o),
		newCallbackKeyCmd(o),
		newContainerCmd(o),
		newOCIHookCmd(o),
		newKubeWatchCmd(o),
		newDoctorCmd(o),
		newManCmd(o),
		newVersionCmd(o),
	)
	return root
}

func execute(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o := &rootOptions{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCmd(o)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "sluice:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "sluice:", err)
	return 1
}
