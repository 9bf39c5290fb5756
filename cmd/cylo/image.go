package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cylo-dev/cylo/backend"
	"github.com/cylo-dev/cylo/internal/image"
)

func newImageCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and list guest images",
	}
	cmd.AddCommand(newImageBuildCommand(g), newImageListCommand(g), newImagePruneCommand(g))
	return cmd
}

func newImageBuildCommand(g *globalFlags) *cobra.Command {
	var mirror string
	var extra []string
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the guest kernel, initramfs and root filesystem from Debian packages",
		Long: `Build a guest image from Debian packages: the kernel from
linux-image-cloud-amd64 (a bzImage for QEMU and an ELF vmlinux for
Firecracker), an initramfs with cylo-agent as /init and the guest's kernel
modules, and an ext4 root filesystem made by debootstrap.

Profiles: base (bash, python3, nodejs), full (base plus golang-go and rustc),
ssh (base plus openssh-server with a pinned host key).

Images are cached by their inputs; a second build with the same inputs
returns at once. Building the root filesystem needs root (debootstrap).`,
		Example: `  sudo cylo image build --profile base
  sudo cylo image build --profile full`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o := g.backendOptions("")
			agent, err := backend.FindAgent(o.AgentPath)
			if err != nil {
				return err
			}
			img, err := image.Build(cmd.Context(), image.Options{
				Profile:       image.Profile(o.Profile),
				AgentPath:     agent,
				CacheDir:      o.CacheDir,
				Mirror:        mirror,
				ExtraPackages: extra,
				Progress:      image.ProgressWriter(os.Stderr),
			})
			if err != nil {
				return err
			}
			fmt.Printf("image %s-%s ready in %s (kernel %s)\n", img.Profile, img.Key, img.Dir, img.KernelRelease)
			return nil
		},
	}
	cmd.Flags().StringVar(&mirror, "mirror", "", "Debian mirror for debootstrap (default: the host's apt source, else http://deb.debian.org/debian)")
	cmd.Flags().StringSliceVar(&extra, "package", nil, "extra Debian package to install in the root filesystem (repeatable)")
	return cmd
}

func newImageListCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the images in the cache and their sizes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := g.cfg.CacheDir
			if dir == "" {
				var err error
				if dir, err = image.DefaultCacheDir(); err != nil {
					return err
				}
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				if os.IsNotExist(err) {
					fmt.Printf("no images in %s: build one with cylo image build\n", dir)
					return nil
				}
				return err
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSIZE ON DISK")
			seen := make(map[uint64]bool)
			var total int64
			for _, e := range entries {
				if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
					continue
				}
				size, unique := dirSize(filepath.Join(dir, e.Name()), seen)
				total += unique
				fmt.Fprintf(w, "%s\t%.1f MiB\n", e.Name(), float64(size)/(1<<20))
			}
			// Images share their kernel and root filesystem with the
			// cached parts through hard links, so the total counts each
			// file once.
			fmt.Fprintf(w, "total\t%.1f MiB\n", float64(total)/(1<<20))
			return w.Flush()
		},
	}
}

// dirSize returns the allocated size of the files under dir, so sparse
// images count for what they use, and the part of it in files not in seen
// (by inode), which it adds to seen.
func dirSize(dir string, seen map[uint64]bool) (size, unique int64) {
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		n := allocated(info)
		size += n
		if ino := inode(info); !seen[ino] {
			seen[ino] = true
			unique += n
		}
		return nil
	})
	return size, unique
}

func newImagePruneCommand(g *globalFlags) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove images built for other cylo-agent binaries",
		Long: `Remove the image directories that the current cylo-agent would not use:
every agent build gets its own initramfs, so old ones accumulate. The
cached kernels and root filesystems stay, so later builds stay fast.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o := g.backendOptions("")
			dir := o.CacheDir
			if dir == "" {
				var err error
				if dir, err = image.DefaultCacheDir(); err != nil {
					return err
				}
			}
			agent, err := backend.FindAgent(o.AgentPath)
			if err != nil {
				return err
			}
			keep := make(map[string]bool)
			for _, profile := range image.Profiles() {
				img, err := image.Lookup(image.Options{Profile: profile, AgentPath: agent, CacheDir: dir})
				if err == nil {
					keep[img.Dir] = true
				}
			}
			for _, profile := range image.Profiles() {
				dirs, _ := filepath.Glob(filepath.Join(dir, string(profile)+"-*"))
				for _, d := range dirs {
					if keep[d] {
						continue
					}
					fmt.Println("remove", d)
					if dryRun {
						continue
					}
					if err := os.RemoveAll(d); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be removed, remove nothing")
	return cmd
}
