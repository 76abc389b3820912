package preset

import (
	"fmt"
	"strconv"
	"strings"
)

// flagValue finds a flag's value in argv, spelled "--name V" or
// "--name=V" under any of names. Underscores and dashes in a long name are
// the same (vLLM's FlexibleArgumentParser accepts both). The last
// occurrence wins, as with argparse.
func flagValue(argv []string, names ...string) (value string, found bool) {
	for i := 0; i < len(argv); i++ {
		name, v, hasEq := strings.Cut(argv[i], "=")
		if !matchesFlag(name, names) {
			continue
		}
		switch {
		case hasEq:
			value, found = v, true
		case i+1 < len(argv):
			value, found = argv[i+1], true
			i++
		}
	}
	return value, found
}

// flagInt is flagValue for an integer flag; def when it is absent.
func flagInt(argv []string, def int, names ...string) (int, error) {
	v, ok := flagValue(argv, names...)
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a whole number", names[0], v)
	}
	return n, nil
}

// hasFlag reports whether argv holds any of names (bare or with =value).
func hasFlag(argv []string, names ...string) bool {
	for _, arg := range argv {
		name, _, _ := strings.Cut(arg, "=")
		if matchesFlag(name, names) {
			return true
		}
	}
	return false
}

func matchesFlag(arg string, names []string) bool {
	if !strings.HasPrefix(arg, "-") {
		return false
	}
	norm := func(s string) string {
		if strings.HasPrefix(s, "--") {
			return strings.ReplaceAll(s, "_", "-")
		}
		return s
	}
	for _, n := range names {
		if norm(arg) == norm(n) {
			return true
		}
	}
	return false
}

// moduleIndex returns the index of "-m MODULE" 's MODULE in argv, or -1.
func moduleIndex(argv []string, module string) int {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == "-m" && argv[i+1] == module {
			return i + 1
		}
	}
	return -1
}

// subcommandIndex returns the index of SUB in "PROG SUB" (PROG matched by
// its base name, so "/usr/bin/vllm serve" counts), or -1.
func subcommandIndex(argv []string, prog, sub string) int {
	for i := 0; i+1 < len(argv); i++ {
		if baseName(argv[i]) == prog && argv[i+1] == sub {
			return i + 1
		}
	}
	return -1
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
