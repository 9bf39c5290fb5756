// Package image builds the guest images cylo boots: a Debian cloud kernel
// (as a bzImage for QEMU and an ELF vmlinux for Firecracker), an initramfs
// holding the agent as /init and the kernel modules it loads, and a
// read-only ext4 root filesystem made with debootstrap. Everything comes
// from Debian packages.
//
// Images are cached under Options.CacheDir:
//
//	kernel-PACKAGE_VERSION/    vmlinuz, vmlinux, kernel-release, lib/modules/RELEASE/
//	rootfs-PROFILE-KEY/        rootfs.ext4 (+ ssh key files for the ssh profile)
//	PROFILE-KEY/               one image: hard links to the parts, initrd.cpio, image.json
//
// The kernel part depends on the kernel package version, the rootfs part on
// the profile, suite, mirror, package list and ssh key, and the image
// directory on both plus the agent binary. Build reuses any part whose
// inputs are unchanged. Every directory is built under a temporary name
// next to its final one and renamed when complete, so a killed build
// leaves only .tmp-* directories, which never count as built.
package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// formatVersion changes whenever the builder lays out or fills images
// differently, so images from an older builder are rebuilt.
const formatVersion = 1

// DefaultSuite is the Debian release the root filesystem is built from.
const DefaultSuite = "bookworm"

// ErrNotBuilt is wrapped by Lookup's error when no image matches.
var ErrNotBuilt = errors.New("image not built")

// Profile names a set of packages in the root filesystem.
type Profile string

// Profiles. Every profile has bash, python3 and nodejs.
const (
	ProfileBase Profile = "base" // bash, python3, nodejs
	ProfileFull Profile = "full" // base + golang-go, rustc
	ProfileSSH  Profile = "ssh"  // base + openssh-server with a pinned host key
)

var profilePackages = map[Profile][]string{
	ProfileBase: {"python3", "nodejs"},
	// libc6-dev is listed because rustc depends on the virtual package
	// libc-dev, which debootstrap's resolver does not map to a provider.
	ProfileFull: {"python3", "nodejs", "golang-go", "rustc", "libc6-dev"},
	ProfileSSH:  {"python3", "nodejs", "openssh-server"},
}

// Profiles returns the known profiles.
func Profiles() []Profile {
	return []Profile{ProfileBase, ProfileFull, ProfileSSH}
}

// Packages returns the packages installed on top of Debian's minbase
// variant, or nil for an unknown profile.
func (p Profile) Packages() []string {
	return slices.Clone(profilePackages[p])
}

// Options configure Build and Lookup. The zero value of each field except
// AgentPath selects its default.
type Options struct {
	// Profile selects the root filesystem's packages. Default ProfileBase.
	Profile Profile
	// AgentPath is the statically linked cylo-agent binary that becomes
	// the initramfs's /init. Required.
	AgentPath string
	// CacheDir contains the images. Default DefaultCacheDir().
	CacheDir string
	// Suite is the Debian release. Default DefaultSuite.
	Suite string
	// Mirror is the Debian mirror debootstrap installs from. Default: the
	// host's apt source for Suite, or DefaultMirror.
	Mirror string
	// KernelPackage is the kernel package, a meta package or a versioned
	// one. Default DefaultKernelPackage. The kernel is always downloaded
	// with the host's apt sources.
	KernelPackage string
	// ExtraPackages are installed in addition to the profile's.
	ExtraPackages []string
	// AuthorizedKey is the authorized_keys line for root in the ssh
	// profile. Empty means Build generates an ed25519 key pair and stores
	// the private key in the image directory.
	AuthorizedKey string
	// CachedOnly makes Build use only the kernel and root filesystem
	// already in the cache. It then writes a new initramfs for a changed
	// agent in well under a second and needs neither root nor the mirror.
	// It fails with ErrNotBuilt when a part is missing.
	CachedOnly bool
	// Progress, if set, is called when each build step starts and ends.
	Progress func(Step)
}

// Image is a built image. All paths are inside Dir and stay valid until the
// cache directory is cleaned.
type Image struct {
	Dir           string
	Profile       Profile
	Key           string // hash of every build input, the suffix of Dir
	Kernel        string // bzImage, for QEMU
	VMLinux       string // uncompressed ELF kernel, for Firecracker
	Initrd        string // uncompressed newc initramfs
	Rootfs        string // ext4 root filesystem, to attach read-only
	KernelRelease string // uname -r of Kernel

	// The ssh profile only.
	HostKeyPub         string // the guest's host key as an authorized_keys line, for pinning
	HostKeyFingerprint string // SHA256:... fingerprint of HostKeyPub
	ClientKey          string // private key authorized for root, or "" when Options.AuthorizedKey was given
	RootPassword       string // root's password, which sshd accepts
}

// DefaultCacheDir returns $XDG_CACHE_HOME/cylo/images, or
// ~/.cache/cylo/images when XDG_CACHE_HOME is unset.
func DefaultCacheDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the cache directory: %w: set Options.CacheDir", err)
	}
	return filepath.Join(base, "cylo", "images"), nil
}

// BuildCommandHelp returns the command that builds the image for profile.
func BuildCommandHelp(profile Profile) string {
	return "cylo image build --profile " + string(profile)
}

// withDefaults returns o with defaults filled in and checks it.
func (o Options) withDefaults() (Options, error) {
	if o.Profile == "" {
		o.Profile = ProfileBase
	}
	if _, ok := profilePackages[o.Profile]; !ok {
		return o, fmt.Errorf("unknown image profile %q: want one of %v", o.Profile, Profiles())
	}
	if o.AgentPath == "" {
		return o, errors.New("agent binary path is empty: set Options.AgentPath to the cylo-agent binary")
	}
	if o.CacheDir == "" {
		dir, err := DefaultCacheDir()
		if err != nil {
			return o, err
		}
		o.CacheDir = dir
	}
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if o.Mirror == "" {
		o.Mirror = hostMirror(o.Suite)
	}
	o.Mirror = strings.TrimSuffix(o.Mirror, "/")
	if o.KernelPackage == "" {
		o.KernelPackage = DefaultKernelPackage
	}
	if o.AuthorizedKey != "" && o.Profile != ProfileSSH {
		return o, fmt.Errorf("an authorized key is set for profile %s: only the ssh profile runs sshd", o.Profile)
	}
	return o, nil
}

// packages returns the sorted, deduplicated package list of the rootfs.
func (o Options) packages() []string {
	pkgs := append(o.Profile.Packages(), o.ExtraPackages...)
	slices.Sort(pkgs)
	return slices.Compact(pkgs)
}

// rootfsInputs are the inputs of the root filesystem part.
type rootfsInputs struct {
	Format        int      `json:"format"`
	Profile       Profile  `json:"profile"`
	Suite         string   `json:"suite"`
	Mirror        string   `json:"mirror"`
	Packages      []string `json:"packages"`
	AuthorizedKey string   `json:"authorized_key,omitempty"`
	// RootPassword is set for the ssh profile, whose root has a password
	// since this field was added. It keeps ssh images from older builders,
	// which have none, from matching, without a formatVersion change that
	// would rebuild the other profiles too.
	RootPassword bool `json:"root_password,omitempty"`
}

// manifest is image.json in an image directory.
type manifest struct {
	Rootfs         rootfsInputs `json:"rootfs"`
	KernelPackage  string       `json:"kernel_package"` // as requested, such as the meta package
	KernelResolved string       `json:"kernel_resolved"`
	KernelVersion  string       `json:"kernel_version"`
	KernelRelease  string       `json:"kernel_release"`
	Modules        []string     `json:"modules"`
	AgentSHA256    string       `json:"agent_sha256"`
	Key            string       `json:"key"`
	BuiltAt        time.Time    `json:"built_at"`
}

// Files of an image directory.
const (
	initrdFile   = "initrd.cpio"
	manifestFile = "image.json"
)

func (o Options) rootfsInputs() rootfsInputs {
	return rootfsInputs{
		Format:        formatVersion,
		Profile:       o.Profile,
		Suite:         o.Suite,
		Mirror:        o.Mirror,
		Packages:      o.packages(),
		AuthorizedKey: strings.TrimSpace(o.AuthorizedKey),
		RootPassword:  o.Profile == ProfileSSH,
	}
}

// hashKey returns a short hex SHA-256 of the JSON form of v.
func hashKey(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err) // the inputs are plain structs
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

// imageKey hashes every input of an image.
func imageKey(rootfs rootfsInputs, kernelPackage, kernelVersion, agentSHA256 string, modules []string) string {
	return hashKey(struct {
		Rootfs        rootfsInputs
		KernelPackage string
		KernelVersion string
		Modules       []string
		Agent         string
	}{rootfs, kernelPackage, kernelVersion, modules, agentSHA256})
}

func fileSHA256(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read agent binary: %w", err)
	}
	return sha256Hex(data), nil
}

func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Lookup returns the newest built image for o without building anything.
// It matches every input except the kernel version, so an apt update that
// brings a newer kernel package does not hide the image already built; Build
// makes one with the newer kernel. When nothing matches, the error wraps
// ErrNotBuilt and names the build command.
func Lookup(o Options) (*Image, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	agentSum, err := fileSHA256(o.AgentPath)
	if err != nil {
		return nil, err
	}
	want := o.rootfsInputs()

	dirs, _ := filepath.Glob(filepath.Join(o.CacheDir, string(o.Profile)+"-*"))
	var best *manifest
	var bestDir string
	for _, dir := range dirs {
		m, err := readManifest(dir)
		if err != nil {
			continue
		}
		if m.AgentSHA256 != agentSum || m.KernelPackage != o.KernelPackage || !slices.Equal(m.Modules, GuestModules) || !sameRootfs(m.Rootfs, want) {
			continue
		}
		if best == nil || m.BuiltAt.After(best.BuiltAt) {
			best, bestDir = m, dir
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: no %s image for agent %s in %s: run %s", ErrNotBuilt, o.Profile, o.AgentPath, o.CacheDir, BuildCommandHelp(o.Profile))
	}
	return openImage(bestDir, best)
}

func sameRootfs(a, b rootfsInputs) bool {
	return hashKey(a) == hashKey(b)
}

func readManifest(dir string) (*manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, manifestFile), err)
	}
	return &m, nil
}

// openImage fills an Image from a complete image directory.
func openImage(dir string, m *manifest) (*Image, error) {
	img := &Image{
		Dir:           dir,
		Profile:       m.Rootfs.Profile,
		Key:           m.Key,
		Kernel:        filepath.Join(dir, kernelFile),
		VMLinux:       filepath.Join(dir, vmlinuxFile),
		Initrd:        filepath.Join(dir, initrdFile),
		Rootfs:        filepath.Join(dir, rootfsFile),
		KernelRelease: m.KernelRelease,
	}
	if img.Profile == ProfileSSH {
		pub, err := os.ReadFile(filepath.Join(dir, hostKeyPubFile))
		if err != nil {
			return nil, fmt.Errorf("ssh image %s: %w", dir, err)
		}
		img.HostKeyPub = strings.TrimSpace(string(pub))
		fp, err := os.ReadFile(filepath.Join(dir, hostKeyFingerprintFile))
		if err != nil {
			return nil, fmt.Errorf("ssh image %s: %w", dir, err)
		}
		img.HostKeyFingerprint = strings.TrimSpace(string(fp))
		if _, err := os.Stat(filepath.Join(dir, clientKeyFile)); err == nil {
			img.ClientKey = filepath.Join(dir, clientKeyFile)
		}
		password, err := os.ReadFile(filepath.Join(dir, rootPasswordFile))
		if err != nil {
			return nil, fmt.Errorf("ssh image %s: %w: rebuild it with %s", dir, err, BuildCommandHelp(img.Profile))
		}
		img.RootPassword = strings.TrimSpace(string(password))
	}
	for _, p := range []string{img.Kernel, img.VMLinux, img.Initrd, img.Rootfs} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("image %s is incomplete: %w: rebuild it with %s", dir, err, BuildCommandHelp(img.Profile))
		}
	}
	return img, nil
}
