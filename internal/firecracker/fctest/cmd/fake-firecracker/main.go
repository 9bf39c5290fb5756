// Command fake-firecracker is a test double for Firecracker, built by the
// firecracker driver's tests and passed to the driver as its binary. It
// serves the API on --api-sock, validates every request against the
// Firecracker API definition, models the pre-boot and post-boot rules,
// and records each request. It boots no guest: on InstanceStart it runs
// cylo-agent as a host process and bridges the vsock socket's
// "CONNECT <port>" handshake to it.
//
// Its behaviour is set through the environment variables that package
// fctest documents.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/cylo-dev/cylo/internal/firecracker/fctest"
)

func main() {
	os.Exit(run())
}

func run() int {
	flags := flag.NewFlagSet("fake-firecracker", flag.ContinueOnError)
	apiSock := flags.String("api-sock", "", "path of the API socket")
	id := flags.String("id", "anonymous-instance", "microVM id")
	showVersion := flags.Bool("version", false, "print the version and exit")
	if err := flags.Parse(os.Args[1:]); err != nil {
		return 1
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fake-firecracker: unexpected argument %q\n", flags.Arg(0))
		return 1
	}

	specPath := os.Getenv(fctest.SpecEnv)
	if specPath == "" {
		var err error
		if specPath, err = fctest.FindSpec(); err != nil {
			fmt.Fprintln(os.Stderr, "fake-firecracker:", err)
			return 2
		}
	}
	spec, err := fctest.LoadSpec(specPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake-firecracker:", err)
		return 2
	}
	version := os.Getenv(fctest.EnvVersion)
	if version == "" {
		version = spec.Version
	}
	if *showVersion {
		fmt.Printf("Firecracker v%s (fake-firecracker test double)\n", version)
		return 0
	}
	if *apiSock == "" {
		fmt.Fprintln(os.Stderr, "fake-firecracker: --api-sock is required")
		return 1
	}
	if status, ok := exitOn("start"); ok {
		fmt.Fprintf(os.Stderr, "fake-firecracker: exiting with status %d before creating the API socket (%s)\n", status, fctest.EnvExitOn)
		return status
	}

	dir := filepath.Dir(*apiSock)
	record := os.Getenv(fctest.EnvRecord)
	if record == "" {
		record = filepath.Join(dir, fctest.RecordName)
	}
	vm, err := newMachine(spec, *id, version, dir, record)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake-firecracker:", err)
		return 1
	}

	l, err := net.Listen("unix", *apiSock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake-firecracker: bind API socket:", err)
		return 1
	}
	fmt.Printf("fake-firecracker: serving the API on %s (test double, no guest)\n", *apiSock)

	srv := &http.Server{Handler: vm}
	go srv.Serve(l)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var status int
	select {
	case sig := <-sigs:
		fmt.Printf("fake-firecracker: %v\n", sig)
		status = 128 + int(sig.(syscall.Signal))
	case status = <-vm.exit:
	}
	srv.Shutdown(context.Background())
	vm.stopAgent()
	return status
}
