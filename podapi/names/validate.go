package names

import (
	"fmt"
	"net"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Limits on names. Group and namespace names come from Kubernetes label
// values and namespaces (63 characters); member ids are pod names (253).
const (
	MaxGroupNameLen  = 63
	MaxMemberIDLen   = 253
	MaxSize          = 1 << 16
	MaxAddressLength = 253
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)

// ValidateName checks a group, namespace or member name; field names the
// input in the error.
func ValidateName(field, v string, max int) error {
	switch {
	case v == "":
		return fmt.Errorf("%s is empty: give a name", field)
	case len(v) > max:
		return fmt.Errorf("%s %q is %d characters long; the limit is %d", field, truncate(v), len(v), max)
	case !nameRE.MatchString(v):
		return fmt.Errorf("%s %q is not a valid name: use letters, digits, '.', '_' and '-', starting and ending with a letter or digit", field, v)
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// ValidateSize checks a group size.
func ValidateSize(size int) error {
	if size < 1 || size > MaxSize {
		return fmt.Errorf("size %d is out of range: a group has between 1 and %d members", size, MaxSize)
	}
	return nil
}

// ValidateAddress checks a member address: an IP address or an RFC 1123
// host name, no port. Addresses reach runtimes' argv, env and templates
// (MASTER_ADDR, {{.LeaderAddr}} in a user's sh -c), so nothing else may
// pass: not a shell's $(...), not a space, not a quote.
func ValidateAddress(addr string) error {
	if addr == "" {
		return fmt.Errorf("address is empty: give the IP address the runtime listens on")
	}
	if len(addr) > MaxAddressLength {
		return fmt.Errorf("address %q is %d characters long; the limit is %d", truncate(addr), len(addr), MaxAddressLength)
	}
	if net.ParseIP(addr) != nil {
		return nil
	}
	if errs := validation.IsDNS1123Subdomain(strings.ToLower(addr)); len(errs) > 0 {
		return fmt.Errorf("address %q is not an IP address or host name (RFC 1123: letters, digits, '-' and '.')", truncate(addr))
	}
	return nil
}
