package musterv1

// Why the coordinator refused a call, for callers that act on it: the
// coordinator attaches a google.rpc.ErrorInfo with Domain ErrorDomain and
// one of these reasons to the status (hand-written, not generated).
const (
	ErrorDomain = "muster.dev"
	// ReasonGroupFull: Join found the group's size of members attached,
	// the caller not among them (codes.ResourceExhausted). Transient when
	// the caller replaces a member that is still leaving, as a
	// Deployment's new pod replaces a deleted one that still terminates.
	ReasonGroupFull = "GROUP_FULL"
)
