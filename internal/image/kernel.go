package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// DefaultKernelPackage is Debian's meta package for the cloud kernel, a
// small build with virtio drivers as modules and no hardware drivers.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// Files of a kernel part directory.
const (
	kernelFile  = "vmlinuz"        // bzImage, booted by QEMU
	vmlinuxFile = "vmlinux"        // ELF, booted by Firecracker
	releaseFile = "kernel-release" // uname -r of the kernel
)

// kernelPackage is a concrete kernel package version from the apt cache.
type kernelPackage struct {
	Name    string // linux-image-6.1.0-57-cloud-amd64
	Version string // 6.1.192-3
}

// realKernelPackage matches the dependency of a meta package on the
// versioned kernel package.
var realKernelPackage = regexp.MustCompile(`^linux-image-[0-9][^ ,]*$`)

// resolveKernelPackage turns a meta package such as linux-image-cloud-amd64
// into the versioned package it depends on, using the host's apt cache.
// A name that already is a versioned package resolves to itself.
func resolveKernelPackage(ctx context.Context, name string) (kernelPackage, error) {
	fields, err := aptShow(ctx, name)
	if err != nil {
		return kernelPackage{}, err
	}
	if realKernelPackage.MatchString(name) {
		return kernelPackage{Name: name, Version: fields["Version"]}, nil
	}

	for _, dep := range strings.Split(fields["Depends"], ",") {
		dep = strings.TrimSpace(dep)
		depName, _, _ := strings.Cut(dep, " ")
		if !realKernelPackage.MatchString(depName) {
			continue
		}
		real, err := aptShow(ctx, depName)
		if err != nil {
			return kernelPackage{}, err
		}
		return kernelPackage{Name: depName, Version: real["Version"]}, nil
	}
	return kernelPackage{}, fmt.Errorf("kernel package %s depends on no linux-image-VERSION package (Depends: %s)", name, fields["Depends"])
}

// aptShow returns the control fields of the candidate version of pkg.
func aptShow(ctx context.Context, pkg string) (map[string]string, error) {
	out, err := runTool(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return nil, fmt.Errorf("package %s not found in the host's apt cache: run apt-get update, or check the name: %w", pkg, err)
	}
	fields := parseControl(out)
	if fields["Version"] == "" {
		return nil, fmt.Errorf("apt-cache show %s printed no Version field", pkg)
	}
	return fields, nil
}

// parseControl parses the first stanza of Debian control data. Continuation
// lines are appended to their field.
func parseControl(data []byte) map[string]string {
	fields := map[string]string{}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && last != "" {
			fields[last] += "\n" + strings.TrimSpace(line)
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = key
		fields[key] = strings.TrimSpace(value)
	}
	return fields
}

// fetchKernel downloads pkg with the host's apt sources and fills dir with
// the bzImage, the ELF vmlinux, the release string and the module tree
// (lib/modules/RELEASE, with depmod's indexes). work is a scratch
// directory the caller removes.
func fetchKernel(ctx context.Context, pkg kernelPackage, work, dir string) (release string, err error) {
	if _, err := runTool(ctx, work, "apt-get", "download", "-q", pkg.Name+"="+pkg.Version); err != nil {
		return "", fmt.Errorf("download kernel package %s=%s: %w", pkg.Name, pkg.Version, err)
	}
	debs, _ := filepath.Glob(filepath.Join(work, pkg.Name+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files in %s, want 1", pkg.Name, len(debs), work)
	}
	tree := filepath.Join(work, "tree")
	if _, err := runTool(ctx, work, "dpkg-deb", "-x", debs[0], tree); err != nil {
		return "", err
	}

	kernels, _ := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return "", fmt.Errorf("kernel package %s contains %d boot/vmlinuz-* files, want 1", pkg.Name, len(kernels))
	}
	release = strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	modules := modulesDir(tree, release)
	if st, err := os.Stat(modules); err != nil || !st.IsDir() {
		return "", fmt.Errorf("kernel package %s has no module directory for release %s", pkg.Name, release)
	}

	if err := os.Rename(kernels[0], filepath.Join(dir, kernelFile)); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(dir, "lib"), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(filepath.Join(tree, "lib", "modules"), filepath.Join(dir, "lib", "modules")); err != nil {
		return "", err
	}
	if _, err := runTool(ctx, "", "depmod", "-b", dir, release); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, releaseFile), []byte(release+"\n"), 0o644); err != nil {
		return "", err
	}
	return release, nil
}

// writeVMLinux extracts the ELF kernel from the bzImage in dir.
func writeVMLinux(dir string) error {
	bz, err := os.ReadFile(filepath.Join(dir, kernelFile))
	if err != nil {
		return err
	}
	elf, err := ExtractVMLinux(bz)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", filepath.Join(dir, kernelFile), err)
	}
	return os.WriteFile(filepath.Join(dir, vmlinuxFile), elf, 0o644)
}

// readRelease returns the kernel release recorded in a kernel part.
func readRelease(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, releaseFile))
	if err != nil {
		return "", err
	}
	release := strings.TrimSpace(string(data))
	if release == "" {
		return "", errors.New("empty kernel release in " + filepath.Join(dir, releaseFile))
	}
	return release, nil
}

// modulesDir returns root/lib/modules/release.
func modulesDir(root, release string) string {
	return filepath.Join(root, "lib", "modules", release)
}
