// Package logging gives every muster binary the same two log flags:
// --log-level (debug, info, warn, error) and --log-format (text, json).
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
)

// Flags are the values of --log-level and --log-format.
type Flags struct {
	Level  string
	Format string
}

// Register adds --log-level and --log-format to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.Format, "log-format", "text", "text (key=value) or json (one JSON object per line, for log collectors)")
}

// New makes the logger the flags ask for, writing to w; the error names
// the flag and the values it takes.
func (f Flags) New(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.Level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f.Format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", f.Format)
}
