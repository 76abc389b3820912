package preset

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// ErrAddress is wrapped by every error about an address that is neither an
// IP literal nor a DNS name.
var ErrAddress = errors.New("is not an IP address or DNS name")

// validAddress reports whether addr is an IP literal (without a zone) or an
// RFC 1123 DNS subdomain (letters, digits, '-' and '.', starting and ending
// with a letter or digit). Such a string holds no shell metacharacter, no
// white space and cannot pass for an option ("-x"), so it is safe in argv,
// in the environment, in a generated file and inside `sh -c "...
// {{.LeaderAddr}}"`. Case is ignored, as the coordinator ignores it when it
// accepts a member's address.
func validAddress(addr string) bool {
	if net.ParseIP(addr) != nil {
		return true
	}
	return len(validation.IsDNS1123Subdomain(strings.ToLower(addr))) == 0
}

// checkAddress returns an error naming field when addr is not valid.
func checkAddress(field, addr string) error {
	if validAddress(addr) {
		return nil
	}
	shown := addr
	if len(shown) > 64 {
		shown = shown[:64] + "..."
	}
	return fmt.Errorf("%s %q %w (want an IP literal or an RFC 1123 host name: letters, digits, '-' and '.'); it comes from a member's --address (MUSTER_ADDRESS, POD_IP) through the coordinator: fix that member's address",
		field, shown, ErrAddress)
}

// checkAddresses refuses an assignment whose addresses could smuggle
// anything but an address into the runtime's argv, environment, files or a
// templated argument: they come over the network from the coordinator,
// which took them from the members, and the agent often runs as root. It is
// called where argv and env are built (Render, Check, Build), not only once
// when the assignment arrives, so that no path can skip it. needLeader is
// false before the barrier, when no leader is known yet (Check); the
// member's own Address is always known.
func (a Assignment) checkAddresses(needLeader bool) error {
	if err := checkAddress("address", a.Address); err != nil {
		return err
	}
	if a.LeaderAddr != "" || needLeader {
		if err := checkAddress("leader address", a.LeaderAddr); err != nil {
			return err
		}
	}
	for rank, p := range a.Peers {
		if err := checkAddress(fmt.Sprintf("address of rank %d", rank), p); err != nil {
			return err
		}
	}
	return nil
}
