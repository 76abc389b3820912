package podapi

// Where a cluster's coordinator is: the coordinator writes this ConfigMap
// (its --publish-namespace, the chart's release namespace) and kubectl
// muster reads it with the user's own credentials.
const (
	// CoordinatorConfigMap is the ConfigMap's name.
	CoordinatorConfigMap = "muster-coordinator"
	// CoordinatorNamespace is where muster's chart is installed by default
	// and where kubectl muster looks first.
	CoordinatorNamespace = "muster"
	// CoordinatorAddressKey holds the address agents dial (host:port).
	CoordinatorAddressKey = "address"
	// CoordinatorCAKey holds the PEM CA that verifies the address's
	// certificate ("" when the coordinator serves no TLS).
	CoordinatorCAKey = "ca.crt"
)

// What RBAC grants on groups, as the coordinator asks it in a
// SubjectAccessReview: verbs get, list, watch on resource groups of API
// group muster.dev to read them, create on groups/restart to restart one
// in place. No such API is served; the resource only names the right.
const (
	RBACGroup              = "muster.dev"
	RBACResource           = "groups"
	RBACRestartSubresource = "restart"
)
