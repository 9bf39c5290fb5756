// Package lang is the table of languages cylo runs: the file each snippet
// is written to and the command that runs it in the guest. The agent and
// the SSH transport both use it, so a snippet runs the same way on both.
package lang

import (
	"path/filepath"
	"slices"
	"strings"
)

// Spec says how to run one language in the guest.
type Spec struct {
	Name string
	// File is the name the code is written to, in the working directory.
	File string
	// Argv runs File from the working directory. Compiled languages build
	// into BuildDir first and exec the program so that its exit status and
	// signal are the run's own. No user text is ever part of Argv.
	Argv []string
	// Extensions map a host file to this language (cylo run hello.py).
	Extensions []string
	// Env is added to the run's environment (toolchain caches need a
	// writable home on a read-only root).
	Env []string
}

// BuildDir holds compiled programs. It is on the run's scratch disk.
const BuildDir = "/tmp/cylo-build"

var table = []Spec{
	{
		Name:       "bash",
		File:       "main.sh",
		Argv:       []string{"bash", "main.sh"},
		Extensions: []string{".sh", ".bash"},
	},
	{
		Name:       "python",
		File:       "main.py",
		Argv:       []string{"python3", "main.py"},
		Extensions: []string{".py"},
		Env:        []string{"PYTHONDONTWRITEBYTECODE=1"},
	},
	{
		Name:       "javascript",
		File:       "main.js",
		Argv:       []string{"node", "main.js"},
		Extensions: []string{".js", ".cjs"},
	},
	{
		Name: "go",
		File: "main.go",
		// GOFLAGS=-buildvcs=false: the working directory is not a checkout.
		Argv:       []string{"/bin/sh", "-c", "mkdir -p " + BuildDir + " && go build -o " + BuildDir + "/main main.go && exec " + BuildDir + "/main"},
		Extensions: []string{".go"},
		Env:        []string{"GOCACHE=/tmp/go-cache", "GOPATH=/tmp/go", "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0"},
	},
	{
		Name:       "rust",
		File:       "main.rs",
		Argv:       []string{"/bin/sh", "-c", "mkdir -p " + BuildDir + " && rustc -o " + BuildDir + "/main main.rs && exec " + BuildDir + "/main"},
		Extensions: []string{".rs"},
	},
}

// Lookup returns the spec of the language called name.
func Lookup(name string) (Spec, bool) {
	for _, s := range table {
		if s.Name == name {
			return s, true
		}
	}
	return Spec{}, false
}

// ForExtension returns the spec whose extensions include the extension of
// file, compared case-insensitively.
func ForExtension(file string) (Spec, bool) {
	ext := strings.ToLower(filepath.Ext(file))
	for _, s := range table {
		if slices.Contains(s.Extensions, ext) {
			return s, true
		}
	}
	return Spec{}, false
}

// Names returns the language names in table order.
func Names() []string {
	var names []string
	for _, s := range table {
		names = append(names, s.Name)
	}
	return names
}

// Extensions returns every known file extension.
func Extensions() []string {
	var exts []string
	for _, s := range table {
		exts = append(exts, s.Extensions...)
	}
	return exts
}
