package image

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMirrorFromList(t *testing.T) {
	text := `# comment
deb-src http://src.example/debian bookworm main
deb [ arch=amd64 signed-by=/k.gpg ] http://opts.example/debian trixie main
deb http://deb.example/debian bookworm main contrib
deb http://security.example/debian-security bookworm-security main
`
	if got := mirrorFromList(text, "bookworm"); got != "http://deb.example/debian" {
		t.Errorf("bookworm: got %q", got)
	}
	if got := mirrorFromList(text, "trixie"); got != "http://opts.example/debian" {
		t.Errorf("trixie: got %q", got)
	}
	if got := mirrorFromList(text, "sid"); got != "" {
		t.Errorf("sid: got %q, want none", got)
	}
}

func TestMirrorFromDeb822(t *testing.T) {
	text := `Types: deb
# http://snapshot.example/archive
URIs: http://deb.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: trixie

Types: deb
URIs: http://off.example/debian
Suites: sid
Enabled: no
`
	if got := mirrorFromDeb822(text, "bookworm"); got != "http://deb.example/debian" {
		t.Errorf("bookworm: got %q", got)
	}
	if got := mirrorFromDeb822(text, "trixie"); got != "" {
		t.Errorf("trixie is deb-src only: got %q", got)
	}
	if got := mirrorFromDeb822(text, "sid"); got != "" {
		t.Errorf("sid is disabled: got %q", got)
	}
}

func TestParseControl(t *testing.T) {
	got := parseControl([]byte("\nPackage: linux-image-cloud-amd64\nVersion: 6.1.192-3\nDescription: meta\n more text\nDepends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\n\nPackage: second\n"))
	want := map[string]string{
		"Package":     "linux-image-cloud-amd64",
		"Version":     "6.1.192-3",
		"Description": "meta\nmore text",
		"Depends":     "linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestOptionsDefaults(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	o, err := Options{AgentPath: "/a", Mirror: "http://m.example/debian/"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Profile != ProfileBase || o.Suite != DefaultSuite || o.KernelPackage != DefaultKernelPackage {
		t.Errorf("defaults not applied: %+v", o)
	}
	if o.CacheDir != "/x/cache/cylo/images" {
		t.Errorf("CacheDir = %q", o.CacheDir)
	}
	if o.Mirror != "http://m.example/debian" {
		t.Errorf("Mirror = %q, want the trailing slash removed", o.Mirror)
	}

	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"no agent", Options{}, "agent binary path is empty"},
		{"bad profile", Options{AgentPath: "/a", Profile: "tiny"}, `unknown image profile "tiny"`},
		{"key without ssh", Options{AgentPath: "/a", AuthorizedKey: "ssh-ed25519 AAAA"}, "only the ssh profile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.opts.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestRootfsKeyIgnoresAgentAndOrder(t *testing.T) {
	a := Options{Profile: ProfileBase, Suite: "bookworm", Mirror: "http://m", AgentPath: "/one", ExtraPackages: []string{"jq", "curl"}}
	b := a
	b.AgentPath = "/two"
	b.ExtraPackages = []string{"curl", "jq", "python3"} // python3 is in the profile already
	if hashKey(a.rootfsInputs()) != hashKey(b.rootfsInputs()) {
		t.Errorf("rootfs keys differ for the same package set: %v vs %v", a.rootfsInputs(), b.rootfsInputs())
	}
	c := a
	c.Mirror = "http://other"
	if hashKey(a.rootfsInputs()) == hashKey(c.rootfsInputs()) {
		t.Error("rootfs key does not change with the mirror")
	}

	in := a.rootfsInputs()
	k1 := imageKey(in, "linux-image-6.1.0-57-cloud-amd64", "6.1.192-3", "aa", GuestModules)
	if k1 == imageKey(in, "linux-image-6.1.0-57-cloud-amd64", "6.1.192-3", "bb", GuestModules) {
		t.Error("image key does not change with the agent")
	}
	if k1 == imageKey(in, "linux-image-6.1.0-57-cloud-amd64", "6.1.192-4", "aa", GuestModules) {
		t.Error("image key does not change with the kernel version")
	}
}

func TestLookupNotBuilt(t *testing.T) {
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Lookup(Options{Profile: ProfileSSH, AgentPath: agent, CacheDir: t.TempDir(), Mirror: DefaultMirror})
	if !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("err = %v, want ErrNotBuilt", err)
	}
	if !strings.Contains(err.Error(), "cylo image build --profile ssh") {
		t.Errorf("error %q does not name the build command", err)
	}
}

func TestLookupFindsNewest(t *testing.T) {
	cache := t.TempDir()
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	sum, err := fileSHA256(agent)
	if err != nil {
		t.Fatal(err)
	}
	o, err := Options{AgentPath: agent, CacheDir: cache, Mirror: DefaultMirror}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}

	// Two kernels for the same inputs, and one image for another agent.
	write := func(dir, agentSum, version string, built time.Time) {
		t.Helper()
		m := &manifest{Rootfs: o.rootfsInputs(), KernelPackage: DefaultKernelPackage, KernelVersion: version,
			KernelRelease: "r-" + version, Modules: GuestModules, AgentSHA256: agentSum, Key: dir, BuiltAt: built}
		writeFakeImage(t, filepath.Join(cache, "base-"+dir), m)
	}
	now := time.Now()
	write("old", sum, "1", now.Add(-time.Hour))
	write("new", sum, "2", now)
	write("other", "ffff", "3", now.Add(time.Hour))

	img, err := Lookup(o)
	if err != nil {
		t.Fatal(err)
	}
	if img.Dir != filepath.Join(cache, "base-new") || img.KernelRelease != "r-2" {
		t.Fatalf("Lookup returned %s (release %s), want base-new with release r-2", img.Dir, img.KernelRelease)
	}
	if img.Rootfs != filepath.Join(cache, "base-new", rootfsFile) || img.VMLinux != filepath.Join(cache, "base-new", vmlinuxFile) {
		t.Errorf("paths not inside the image directory: %+v", img)
	}

	// A leftover temporary directory is never an image.
	if err := os.Remove(filepath.Join(cache, "base-new", initrdFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := Lookup(o); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("Lookup of an image without initrd: err = %v, want incomplete", err)
	}
}

func writeFakeImage(t *testing.T, dir string, m *manifest) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{kernelFile, vmlinuxFile, initrdFile, rootfsFile} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := mustJSON(t, m)
	if err := os.WriteFile(filepath.Join(dir, manifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestMissingToolError(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := findTool("cylo-no-such-tool")
	var missing *MissingToolError
	if !errors.As(err, &missing) {
		t.Fatalf("err = %v, want *MissingToolError", err)
	}
	err = checkTools("debootstrap-not-here")
	if err == nil || !strings.Contains(err.Error(), "install the Debian package debootstrap-not-here") {
		t.Errorf("err = %v", err)
	}
	toolPackages["cylo-test-mkfs"] = "e2fsprogs"
	defer delete(toolPackages, "cylo-test-mkfs")
	if err := checkTools("cylo-test-mkfs"); err == nil || !strings.Contains(err.Error(), "apt-get install e2fsprogs") {
		t.Errorf("err = %v, want the package name e2fsprogs", err)
	}
}

func TestCheckMirrorUnreachable(t *testing.T) {
	// A loopback port that was just closed refuses connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	err = checkMirror(context.Background(), "http://"+addr+"/debian", "bookworm")
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("err = %v, want unreachable", err)
	}
}

func TestConfigureRootfs(t *testing.T) {
	tree := t.TempDir()
	outside := t.TempDir()
	mustWrite(t, filepath.Join(outside, "modules", "keep"), "host file")
	mustWrite(t, filepath.Join(tree, "usr/share/doc/bash/copyright"), "x")
	mustWrite(t, filepath.Join(tree, "usr/share/man/man1/bash.1"), "x")
	mustWrite(t, filepath.Join(tree, "boot/vmlinuz-6.1"), "x")
	mustWrite(t, filepath.Join(tree, "usr/lib/modules/6.1/x.ko"), "x")
	mustWrite(t, filepath.Join(tree, "var/cache/apt/archives/python3.deb"), "x")
	mustWrite(t, filepath.Join(tree, "etc/hostname"), "build-host\n")
	mustWrite(t, filepath.Join(tree, "etc/resolv.conf"), "nameserver 10.0.0.1\n")
	mustWrite(t, filepath.Join(tree, "dev/null"), "")
	// An absolute link must not be followed out of the tree.
	if err := os.Symlink(outside, filepath.Join(tree, "lib")); err != nil {
		t.Fatal(err)
	}

	if err := configureRootfs(tree); err != nil {
		t.Fatal(err)
	}

	for _, removed := range []string{"usr/share/doc/bash", "usr/share/man/man1", "boot", "usr/lib/modules", "var/cache/apt/archives/python3.deb", "dev/null"} {
		if _, err := os.Lstat(filepath.Join(tree, removed)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still exists (err %v)", removed, err)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "modules", "keep")); err != nil {
		t.Errorf("file outside the tree was removed through a symbolic link: %v", err)
	}
	for _, dir := range []string{"tmp", "work"} {
		st, err := os.Stat(filepath.Join(tree, dir))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&fs.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
			t.Errorf("/%s mode = %v, want drwxrwxrwt", dir, st.Mode())
		}
	}
	if got := mustRead(t, filepath.Join(tree, "etc/hostname")); got != "cylo\n" {
		t.Errorf("hostname = %q, want cylo", got)
	}
	if got := mustRead(t, filepath.Join(tree, "etc/resolv.conf")); got != "" {
		t.Errorf("resolv.conf = %q, want empty", got)
	}
}

func mustWrite(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
