package gang_test

import (
	"testing"

	"k8s.io/client-go/kubernetes"

	"github.com/muster-dev/muster/test/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// client is the shared local control plane's clientset.
func client(t *testing.T) kubernetes.Interface {
	t.Helper()
	return clustertest.Shared(t).Clientset()
}
