//go:build !linux

package guestinit

import (
	"errors"
	"os"
)

var errUnsupported = errors.New("guestinit runs only in a Linux guest")

// Setup is supported on Linux only.
func Setup() (*Config, error) { return nil, errUnsupported }

// StartSSHD is supported on Linux only.
func StartSSHD() (*os.Process, error) { return nil, errUnsupported }

// PowerOff is supported on Linux only.
func PowerOff() error { return errUnsupported }

// Reboot is supported on Linux only.
func Reboot() error { return errUnsupported }
