package main

import (
	"encoding/json"
	"errors"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/zerotel/zerotel/internal/doctor"
)

func doctorCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what this machine's kernel allows and which zerotel features work",
		Long: `doctor loads and attaches a tiny program of every eBPF kind zerotel could use,
then says feature by feature what zerotel can do here, and why not where not.
Exit code 0: the core works. 2: it does not (not root, no BTF, ...).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := doctor.Run(cmd.Context())
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return err
				}
			} else if err := r.WriteText(os.Stdout); err != nil {
				return err
			}
			if code := r.ExitCode(); code != 0 {
				return &exitError{code: code, err: errors.New("the core does not work here: " + strings.Join(r.Problems(), "; "))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
