package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cylo-dev/cylo/internal/vmstate"
)

func newGCCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Reclaim VMs, sockets, disks and TAP devices left by cylo processes that were killed",
		Long: `Reclaim what cylo processes that died without tearing down left behind:
VMM processes, runtime directories with their sockets and scratch disks,
and TAP devices. VMs of cylo processes that are still running are left
alone. exec and run do the same at start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			store, err := vmstate.Open("")
			if err != nil {
				return err
			}
			report, err := store.GC(cmd.Context(), g.logger())
			fmt.Printf("reclaimed %d VMs (killed %d VMM processes); %d live, %d failed\n",
				len(report.Reclaimed), len(report.Killed), len(report.Live), len(report.Failed))
			return err
		},
	}
}
