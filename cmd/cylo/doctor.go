package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cylo-dev/cylo/backend"
)

func newDoctorCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Show each backend, whether it works on this host, and why not",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o := g.backendOptions("")
			usable := 0
			for _, name := range backend.Names {
				b, err := backend.New(name, o)
				if err != nil {
					fmt.Printf("%-12s unusable: %v\n", name, err)
					continue
				}
				h := b.Health(cmd.Context())
				if h.Usable {
					usable++
					fmt.Printf("%-12s usable\n", name)
				} else {
					fmt.Printf("%-12s unusable: %s\n", name, h.Reason)
				}
				for _, d := range h.Details {
					fmt.Printf("%-12s   %s\n", "", d)
				}
			}
			if usable == 0 {
				return fmt.Errorf("no usable backend (image profile %s): fix one of the reasons above", o.Profile)
			}
			return nil
		},
	}
}
