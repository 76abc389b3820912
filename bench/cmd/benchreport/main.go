// Command benchreport gathers the rows `make bench` wrote (JSON lines, see
// bench/report) into one JSON list and prints them as a table.
//
//	benchreport [--markdown] IN.jsonl OUT.json
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/muster-dev/muster/bench/report"
)

func main() {
	markdown := flag.Bool("markdown", false, "print a Markdown table (for docs/performance.md) instead of a text table")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: benchreport [--markdown] IN.jsonl OUT.json\n\n"+
			"Reads the rows benchmarks appended to IN.jsonl ($MUSTER_BENCH_OUT), writes them\n"+
			"to OUT.json as one list and prints a table. ratio > 1: muster is better.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	rows, err := read(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	b, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(flag.Arg(1), append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	if *markdown {
		writeMarkdown(os.Stdout, rows)
	} else {
		writeText(os.Stdout, rows)
	}
	fmt.Fprintf(os.Stderr, "%d rows written to %s\n", len(rows), flag.Arg(1))
}

func read(path string) ([]report.Row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w (run the benchmarks with MUSTER_BENCH_OUT=%s, as make bench does)", err, path)
	}
	defer f.Close()
	rows := []report.Row{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r report.Row
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		// Targets are the current goals, whichever run wrote the line.
		rows = append(rows, r.WithRatio().WithTarget())
	}
	return rows, sc.Err()
}

func verdict(r report.Row) string {
	switch {
	case r.Ratio == 0:
		return "n/a"
	case r.Ratio >= 1.05:
		return "muster wins"
	case r.Ratio > 1/1.05:
		return "even"
	default:
		return "MUSTER LOSES"
	}
}

func writeText(w io.Writer, rows []report.Row) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "benchmark\tunit\tmuster\tanchor\tanchor value\tratio\tverdict\ttarget\tparameters")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\n", r.Name, r.Unit, report.Fmt(r.Ours), r.Anchor, report.Fmt(r.AnchorValue), r.Ratio, verdict(r), r.TargetText(), r.Params)
	}
	tw.Flush()
	fmt.Fprintln(w, summary(rows))
}

func writeMarkdown(w io.Writer, rows []report.Row) {
	fmt.Fprintf(w, "Measured %s on %d cores (`make bench`). ratio = how many times better muster is (above 1: muster wins).\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU())
	fmt.Fprintln(w, "| benchmark | unit | muster | anchor | anchor value | ratio | verdict | target |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		t := r.TargetText()
		if r.Target != nil && !r.Target.Met {
			t = "**" + t + "**"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %.2f | %s | %s |\n", r.Name, r.Unit, report.Fmt(r.Ours), r.Anchor, report.Fmt(r.AnchorValue), r.Ratio, verdict(r), t)
	}
	fmt.Fprintf(w, "\n%s\n", summary(rows))
}

// summary counts the targets met: "targets: 9 of 24 rows met; 15 not met".
func summary(rows []report.Row) string {
	n, met := 0, 0
	for _, r := range rows {
		if r.Target != nil {
			n++
			if r.Target.Met {
				met++
			}
		}
	}
	return fmt.Sprintf("targets: %d of %d rows with a target met; %d not met", met, n, n-met)
}
