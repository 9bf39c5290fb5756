// Command cylo runs untrusted code snippets in microVMs and reports exactly
// what happened.
//
// Exit status: the snippet's own exit code (128+N when signal N ended it),
// 125 when cylo itself failed, 130 or 143 when cylo was interrupted.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// exitFailure is cylo's exit status when cylo itself failed (bad input, no
// backend, a VM that did not boot), as opposed to the snippet's status.
const exitFailure = 125

// exitError carries an exit status out of a command without printing.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	root := newRootCommand()
	err := root.ExecuteContext(ctx)
	code := 0
	var exit *exitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.code
	default:
		fmt.Fprintln(os.Stderr, "cylo:", err)
		code = exitFailure
	}
	if code != 0 && ctx.Err() != nil && exit == nil {
		// Interrupted: the shell convention for SIGINT, whatever the
		// command returned while it tore the VM down.
		code = 130
	}
	stop()
	os.Exit(code)
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "cylo",
		Short: "Run untrusted code snippets in microVMs",
		Long: `cylo runs code snippets (bash, python, javascript, go, rust) in a fresh
microVM each (Firecracker, or QEMU's microvm machine), and reports exit
status, stdout and stderr, time, memory and which limit fired.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g.register(root)
	root.AddCommand(
		newExecCommand(g),
		newRunCommand(g),
		newDoctorCommand(g),
		newImageCommand(g),
		newGCCommand(g),
		newBenchCommand(g),
	)
	return root
}
