package main

import (
	"fmt"
	"io"
)

// reportFile is a report written to a file when its flag names one.
type reportFile struct {
	path  string
	write func(io.Writer) error
}

// finishReport ends a levee verify or levee load run: it says why the run
// stopped early (runErr), writes the text report to stdout and each file
// asked for (announcing each with "wrote PATH" when announce), and returns
// the exit code: 1 if the run stopped early or any report failed, else 0.
func finishReport(cmd string, stdout, stderr io.Writer, runErr error, text func(io.Writer) error, files []reportFile, announce bool) int {
	code := 0
	if runErr != nil {
		fmt.Fprintln(stderr, cmd+": stopped early:", runErr)
		code = 1
	}
	if err := text(stdout); err != nil {
		fmt.Fprintln(stderr, cmd+":", err)
		code = 1
	}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		if err := writeFile(f.path, f.write); err != nil {
			fmt.Fprintln(stderr, cmd+":", err)
			code = 1
			continue
		}
		if announce {
			fmt.Fprintf(stdout, "wrote %s\n", f.path)
		}
	}
	return code
}
