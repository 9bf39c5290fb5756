package backend

import (
	"context"
	"fmt"
	"os/exec"

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
	binary := u.binary
	if binary == "" {
		binary = "firecracker"
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		h.Reason = fmt.Sprintf("firecracker binary %q not found: install it or set --firecracker-bin", binary)
		return h
	}
	h.Details = append(h.Details, "binary: "+path)
	if st := kvm.Check(); !st.Usable {
		h.Reason = st.Reason
		return h
	}
	h.Reason = u.imageErr.Error()
	return h
}

func (u *unbuiltFirecracker) Run(ctx context.Context, req *cylo.Request) (*cylo.Result, error) {
	return nil, fmt.Errorf("firecracker backend is not usable: %s", u.Health(ctx).Reason)
}
