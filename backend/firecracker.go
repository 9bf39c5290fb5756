package backend

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/cylo-dev/cylo"
	"github.com/cylo-dev/cylo/internal/firecracker"
	"github.com/cylo-dev/cylo/internal/kvm"
)

func newFirecracker(o Options) (cylo.Backend, error) {
	img, imgErr := FindImage(o)
	if imgErr != nil {
		return &unbuiltFirecracker{binary: o.FirecrackerBinary, imageErr: imgErr}, nil
	}
	return firecracker.New(firecracker.Config{
		Binary:      o.FirecrackerBinary,
		KernelPath:  img.VMLinux,
		InitrdPath:  img.Initrd,
		RootfsPath:  img.Rootfs,
		Logger:      o.Logger.With("vmm", Firecracker),
		BootTimeout: o.BootTimeout,
		Transport:   o.Transport,
		SSH:         sshWithImage(o.SSH, img),
		Network:     o.Network,
		TAPName:     o.TAPName,
	})
}

// unbuiltFirecracker is the firecracker backend before its image is
// built. Its Health names the first problem in the order a user fixes
// them: the binary, KVM, then the image.
type unbuiltFirecracker struct {
	binary   string
	imageErr error
}

func (u *unbuiltFirecracker) Name() string { return Firecracker }

func (u *unbuiltFirecracker) Health(ctx context.Context) cylo.Health {
	h := cylo.Health{Backend: Firecracker}
	var problems []string
	binary := u.binary
	if binary == "" {
		binary = "firecracker"
	}
	if path, err := exec.LookPath(binary); err != nil {
		problems = append(problems, fmt.Sprintf("firecracker binary %q not found: install it or set --firecracker-bin", binary))
	} else {
		h.Details = append(h.Details, "binary: "+path)
	}
	if st := kvm.Check(); !st.Usable {
		problems = append(problems, st.Reason)
	}
	problems = append(problems, u.imageErr.Error())
	h.Reason = strings.Join(problems, "; and ")
	return h
}

func (u *unbuiltFirecracker) Run(ctx context.Context, req *cylo.Request) (*cylo.Result, error) {
	return nil, fmt.Errorf("firecracker backend is not usable: %s", u.Health(ctx).Reason)
}
