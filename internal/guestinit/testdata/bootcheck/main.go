// Command bootcheck is a stand-in for cylo-agent in VM tests: as PID 1 it
// runs guestinit.Setup, prints what the test asserts to the console, and
// powers the VM off.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/cylo-dev/cylo/internal/guestinit"
)

func main() {
	cfg, err := guestinit.Setup()
	if err != nil {
		fmt.Printf("cylo-boot-failed: %v\n", err)
		stop()
	}
	fmt.Printf("cylo-boot-ok %s\n", cfg.KernelRelease)
	report("uptime", func() (string, error) {
		data, err := os.ReadFile("/proc/uptime")
		return strings.Fields(string(data) + " ?")[0], err
	})
	fmt.Printf("cylo-check config: channel=%s mode=%s\n", cfg.Channel, cfg.Mode)
	if cfg.Mode == guestinit.ModeSSH {
		serveSSH()
	}

	report("cgroup controllers", func() (string, error) {
		data, err := os.ReadFile(guestinit.CgroupRoot + "/cgroup.subtree_control")
		return string(data), err
	})
	report("agent cgroup", func() (string, error) {
		data, err := os.ReadFile("/proc/self/cgroup")
		return string(data), err
	})
	report("root mount", func() (string, error) {
		data, err := os.ReadFile("/proc/self/mounts")
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[1] == "/" {
				return f[2], err
			}
		}
		return "", err
	})
	report("tmp write", func() (string, error) {
		err := os.WriteFile("/tmp/probe", []byte("scratch"), 0o644)
		data, _ := os.ReadFile("/tmp/probe")
		return string(data), err
	})
	report("work mode", func() (string, error) {
		st, err := os.Stat("/work")
		if err != nil {
			return "", err
		}
		return st.Mode().String(), nil
	})
	report("python", func() (string, error) {
		out, err := exec.Command("/usr/bin/python3", "-c", "print(6*7)").CombinedOutput()
		return string(out), err
	})
	report("node", func() (string, error) {
		out, err := exec.Command("/usr/bin/node", "-e", "console.log(6*7)").CombinedOutput()
		return string(out), err
	})
	report("hostname", os.Hostname)
	if _, err := os.Stat("/usr/bin/go"); err == nil {
		report("go", func() (string, error) {
			return compileAndRun("main.go", "package main\n\nfunc main() { println(6 * 7) }\n",
				"go build -o /tmp/cylo-go main.go && /tmp/cylo-go")
		})
		report("rust", func() (string, error) {
			return compileAndRun("main.rs", "fn main() { println!(\"{}\", 6 * 7); }\n",
				"rustc -o /tmp/cylo-rs main.rs && /tmp/cylo-rs")
		})
	}
	stop()
}

// compileAndRun writes source to /work/name and runs script there.
func compileAndRun(name, source, script string) (string, error) {
	if err := os.WriteFile("/work/"+name, []byte(source), 0o644); err != nil {
		return "", err
	}
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Dir = "/work"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/tmp", "GOCACHE=/tmp/go-cache", "GOPATH=/tmp/go", "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// serveSSH runs sshd and reaps children until sshd exits, as the agent
// does in ssh mode. The test ends the VM.
func serveSSH() {
	sshd, err := guestinit.StartSSHD()
	if err != nil {
		fmt.Printf("cylo-sshd-failed: %v\n", err)
		stop()
	}
	fmt.Printf("cylo-sshd-started pid %d\n", sshd.Pid)
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, 0, nil)
		if err != nil {
			fmt.Printf("cylo-wait-failed: %v\n", err)
			stop()
		}
		if pid == sshd.Pid {
			fmt.Printf("cylo-sshd-exited: %v\n", status)
			stop()
		}
	}
}

// report prints "cylo-check NAME: VALUE" or "cylo-check NAME: error: ERR".
func report(name string, probe func() (string, error)) {
	value, err := probe()
	if err != nil {
		fmt.Printf("cylo-check %s: error: %v\n", name, err)
		return
	}
	fmt.Printf("cylo-check %s: %s\n", name, strings.TrimSpace(value))
}

func stop() {
	err := guestinit.PowerOff()
	fmt.Printf("cylo-poweroff-failed: %v\n", err)
	guestinit.Reboot()
	os.Exit(1)
}
