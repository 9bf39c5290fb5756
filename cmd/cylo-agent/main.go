// Command cylo-agent is cylo's guest agent. In a guest it is the init
// process (PID 1) of the initramfs: it boots the guest (modules, root
// filesystem, cgroups), then serves the host over virtio-serial or vsock.
// On a host it serves the same protocol on a Unix or loopback TCP socket,
// for protocol tests and the Firecracker test double.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/cylo-dev/cylo/internal/agent"
)

func main() {
	if os.Getpid() == 1 {
		runGuest()
		return
	}
	listen := flag.String("listen", "", "address to serve on: unix:PATH or tcp:127.0.0.1:PORT")
	dirBase := flag.String("dir-base", "", "directory under which request working directories are created (default: the request's path as is)")
	version := flag.Bool("version", false, "print the agent version and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: cylo-agent --listen unix:PATH\n\nIn a guest cylo-agent runs as PID 1 and takes no flags.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *version {
		fmt.Println(agent.Version)
		return
	}
	if *listen == "" {
		fmt.Fprintln(os.Stderr, "cylo-agent: --listen is required outside a guest (for example --listen unix:/tmp/agent.sock)")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := runHost(*listen, *dirBase, logger); err != nil {
		fmt.Fprintln(os.Stderr, "cylo-agent:", err)
		os.Exit(1)
	}
}

func runHost(listen, dirBase string, logger *slog.Logger) error {
	cfg := agent.Config{Logger: logger, DirBase: dirBase}
	if parent, err := agent.HostCgroupParent(); err == nil {
		if _, err := agent.PrepareCgroupParent(parent); err == nil {
			cfg.CgroupParent = parent
			defer os.Remove(parent)
		} else {
			logger.Warn("runs get no cgroup: timeouts kill only the process group", "err", err)
		}
	}
	l, err := agent.Listen(listen)
	if err != nil {
		return err
	}
	// SIGINT and SIGTERM close the listener, so the deferred removals run.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-signals
		l.Close()
	}()
	if addr, ok := l.Addr().(*net.UnixAddr); ok {
		defer os.Remove(addr.Name)
	}
	logger.Info("agent listening", "address", listen, "cgroup", cfg.CgroupParent)
	err = agent.NewServer(cfg).Serve(l)
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
