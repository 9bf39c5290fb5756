package image

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Step is a build step, reported through Options.Progress once when it
// starts and once when it ends.
type Step struct {
	Index   int           // 1-based position
	Total   int           // number of steps in a build
	Name    string        // such as "debootstrap"
	Done    bool          // false at the start, true at the end
	Cached  bool          // the result was reused, nothing ran
	Elapsed time.Duration // time spent in the step, when Done
	Err     error         // the step's error, when Done
}

// Names of the build steps, in order.
var stepNames = []string{
	"resolve kernel package",
	"download kernel",
	"extract vmlinux",
	"debootstrap",
	"configure rootfs",
	"make rootfs ext4",
	"write initramfs",
}

// ProgressWriter returns an Options.Progress function that writes one line
// per step to w, such as "[4/7] debootstrap ... 43.1s".
func ProgressWriter(w io.Writer) func(Step) {
	return func(s Step) {
		prefix := fmt.Sprintf("[%d/%d] %s ... ", s.Index, s.Total, s.Name)
		switch {
		case !s.Done:
			fmt.Fprint(w, prefix)
		case s.Err != nil:
			fmt.Fprintf(w, "failed after %.1fs\n", s.Elapsed.Seconds())
		case s.Cached:
			fmt.Fprintln(w, "cached")
		default:
			fmt.Fprintf(w, "%.1fs\n", s.Elapsed.Seconds())
		}
	}
}

// progress reports the steps of one build.
type progress struct {
	report func(Step)
}

// run reports step name, runs fn unless cached, and reports the result.
func (p *progress) run(name string, cached bool, fn func() error) error {
	step := Step{Index: slices.Index(stepNames, name) + 1, Total: len(stepNames), Name: name, Cached: cached}
	if p.report != nil {
		p.report(step)
	}
	start := time.Now()
	var err error
	if !cached {
		err = fn()
	}
	step.Done, step.Elapsed, step.Err = true, time.Since(start), err
	if p.report != nil {
		p.report(step)
	}
	return err
}

// Build returns the image for o, building the parts that are not cached.
// It needs root and network access to the mirror when the root filesystem
// must be built. Cancelling ctx stops the running tool and removes the
// partial output.
func Build(ctx context.Context, o Options) (*Image, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	tools := []string{"apt-cache", "apt-get", "dpkg-deb", "depmod", "modprobe", "mkfs.ext4", "debootstrap"}
	if o.CachedOnly {
		tools = []string{"apt-cache"}
	}
	if err := checkTools(tools...); err != nil {
		return nil, err
	}
	agent, err := os.ReadFile(o.AgentPath)
	if err != nil {
		return nil, fmt.Errorf("read agent binary: %w", err)
	}
	agentSum := sha256Hex(agent)
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache directory: %w", err)
	}
	removeStaleTemps(o.CacheDir)

	b := &builder{o: o, p: &progress{report: o.Progress}}
	var pkg kernelPackage
	err = b.p.run("resolve kernel package", false, func() error {
		pkg, err = resolveKernelPackage(ctx, o.KernelPackage)
		return err
	})
	if err != nil {
		return nil, err
	}

	kernelDir, release, err := b.kernel(ctx, pkg)
	if err != nil {
		return nil, err
	}
	rootfsDir, err := b.rootfs(ctx)
	if err != nil {
		return nil, err
	}

	key := imageKey(o.rootfsInputs(), pkg.Name, pkg.Version, agentSum, GuestModules)
	dir := filepath.Join(o.CacheDir, string(o.Profile)+"-"+key)
	m := &manifest{
		Rootfs:         o.rootfsInputs(),
		KernelPackage:  o.KernelPackage,
		KernelResolved: pkg.Name,
		KernelVersion:  pkg.Version,
		KernelRelease:  release,
		Modules:        GuestModules,
		AgentSHA256:    agentSum,
		Key:            key,
	}
	err = b.p.run("write initramfs", exists(dir), func() error {
		return b.assemble(ctx, dir, m, agent, kernelDir, rootfsDir)
	})
	if err != nil {
		return nil, err
	}
	m, err = readManifest(dir)
	if err != nil {
		return nil, err
	}
	return openImage(dir, m)
}

// builder carries one Build's options and progress.
type builder struct {
	o Options
	p *progress
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._+-]`)

// kernel returns the kernel part directory for pkg, downloading it and
// extracting vmlinux unless the part is cached.
func (b *builder) kernel(ctx context.Context, pkg kernelPackage) (dir, release string, err error) {
	dir = filepath.Join(b.o.CacheDir, "kernel-"+unsafeName.ReplaceAllString(pkg.Name+"_"+pkg.Version, "_"))
	cached := exists(dir)
	if !cached && b.o.CachedOnly {
		return "", "", fmt.Errorf("%w: kernel %s %s is not in %s: run %s", ErrNotBuilt, pkg.Name, pkg.Version, b.o.CacheDir, BuildCommandHelp(b.o.Profile))
	}

	var tmp string
	if !cached {
		if tmp, err = newTempDir(dir); err != nil {
			return "", "", err
		}
		defer os.RemoveAll(tmp)
	}
	err = b.p.run("download kernel", cached, func() error {
		work := filepath.Join(tmp, ".work")
		if err := os.Mkdir(work, 0o755); err != nil {
			return err
		}
		defer os.RemoveAll(work)
		_, err := fetchKernel(ctx, pkg, work, tmp)
		return err
	})
	if err != nil {
		return "", "", err
	}
	err = b.p.run("extract vmlinux", cached, func() error {
		if err := writeVMLinux(tmp); err != nil {
			return err
		}
		return commitDir(tmp, dir)
	})
	if err != nil {
		return "", "", err
	}

	release, err = readRelease(dir)
	return dir, release, err
}

// rootfs returns the rootfs part directory for b.o, building it with
// debootstrap and mkfs.ext4 unless it is cached.
func (b *builder) rootfs(ctx context.Context) (string, error) {
	in := b.o.rootfsInputs()
	dir := filepath.Join(b.o.CacheDir, "rootfs-"+string(in.Profile)+"-"+hashKey(in))
	cached := exists(dir)
	if !cached && b.o.CachedOnly {
		return "", fmt.Errorf("%w: no %s root filesystem in %s: run %s", ErrNotBuilt, in.Profile, b.o.CacheDir, BuildCommandHelp(b.o.Profile))
	}

	var tmp, tree string
	if !cached {
		var err error
		if tmp, err = newTempDir(dir); err != nil {
			return "", err
		}
		tree = filepath.Join(tmp, ".tree")
		defer func() {
			// Mounts first: RemoveAll must not walk into a /proc that a
			// killed debootstrap left mounted in the tree.
			if err := removeTree(tree); err == nil {
				os.RemoveAll(tmp)
			}
		}()
	}

	err := b.p.run("debootstrap", cached, func() error {
		return debootstrap(ctx, in.Suite, in.Mirror, in.Packages, tree)
	})
	if err != nil {
		return "", err
	}
	err = b.p.run("configure rootfs", cached, func() error {
		if err := configureRootfs(tree); err != nil {
			return fmt.Errorf("configure rootfs in %s: %w", tree, err)
		}
		if in.Profile != ProfileSSH {
			return nil
		}
		if err := configureSSH(tree, tmp, in.AuthorizedKey); err != nil {
			return err
		}
		return setRootPassword(ctx, tree, tmp)
	})
	if err != nil {
		return "", err
	}
	err = b.p.run("make rootfs ext4", cached, func() error {
		if err := makeExt4(ctx, tree, filepath.Join(tmp, rootfsFile), "cylo-root"); err != nil {
			return err
		}
		if err := removeTree(tree); err != nil {
			return err
		}
		data, err := json.MarshalIndent(in, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tmp, "inputs.json"), append(data, '\n'), 0o644); err != nil {
			return err
		}
		return commitDir(tmp, dir)
	})
	return dir, err
}

// assemble makes the image directory: hard links to the kernel and rootfs
// parts, the initramfs and image.json.
func (b *builder) assemble(ctx context.Context, dir string, m *manifest, agent []byte, kernelDir, rootfsDir string) error {
	tmp, err := newTempDir(dir)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	links := []string{
		filepath.Join(kernelDir, kernelFile),
		filepath.Join(kernelDir, vmlinuxFile),
		filepath.Join(rootfsDir, rootfsFile),
	}
	if m.Rootfs.Profile == ProfileSSH {
		for _, name := range []string{hostKeyPubFile, hostKeyFingerprintFile, clientKeyFile, clientKeyPubFile, rootPasswordFile} {
			if p := filepath.Join(rootfsDir, name); exists(p) {
				links = append(links, p)
			}
		}
	}
	for _, src := range links {
		if err := os.Link(src, filepath.Join(tmp, filepath.Base(src))); err != nil {
			return fmt.Errorf("link image file: %w", err)
		}
	}

	files, err := resolveModules(ctx, kernelDir, m.KernelRelease, m.Modules)
	if err != nil {
		return err
	}
	err = writeInitramfs(ctx, filepath.Join(tmp, initrdFile), initramfsInput{
		Agent:     agent,
		KernelDir: kernelDir,
		Release:   m.KernelRelease,
		Modules:   files,
	})
	if err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}

	m.BuiltAt = time.Now().UTC()
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, manifestFile), append(data, '\n'), 0o644); err != nil {
		return err
	}
	return commitDir(tmp, dir)
}

// tempPrefix starts the name of every directory under construction.
const tempPrefix = ".tmp-"

// newTempDir creates an empty directory next to final, in the same file
// system, so commitDir can rename it into place.
func newTempDir(final string) (string, error) {
	var suffix [6]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", err
	}
	tmp := filepath.Join(filepath.Dir(final), tempPrefix+filepath.Base(final)+"-"+hex.EncodeToString(suffix[:]))
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return "", fmt.Errorf("create build directory: %w", err)
	}
	return tmp, nil
}

// commitDir renames the finished tmp to final. When a concurrent build got
// there first, its result is kept and tmp is left for the caller to remove.
func commitDir(tmp, final string) error {
	err := os.Rename(tmp, final)
	if err != nil && exists(final) {
		return nil
	}
	return err
}

// removeStaleTemps removes build directories left by killed builds more
// than a day ago. Younger ones may belong to a build still running.
func removeStaleTemps(cacheDir string) {
	entries, _ := os.ReadDir(cacheDir)
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < 24*time.Hour {
			continue
		}
		p := filepath.Join(cacheDir, e.Name())
		if err := removeTree(filepath.Join(p, ".tree")); err == nil {
			os.RemoveAll(p)
		}
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}
