package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// What the cluster keeps on disk (the layout is in the package doc): its
// state for tools outside the launcher, its credentials and the admin
// kubeconfig.

// State is what <Dir>/cluster/state.json records, for tools outside the
// launching process (cluster down, scripts).
type State struct {
	// PID of the launcher: the process that runs etcd and owns the children.
	PID        int            `json:"pid"`
	APIServer  string         `json:"apiserver"`
	Etcd       string         `json:"etcd,omitempty"`
	Kubeconfig string         `json:"kubeconfig"`
	Processes  []ProcessState `json:"processes"`
}

// ProcessState is one child process.
type ProcessState struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Log  string `json:"log"`
}

// ReadState reads dir's state.json.
func ReadState(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cluster", "state.json"))
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, "cluster", "state.json"), err)
	}
	return &st, nil
}

// writeState records the current processes; it is rewritten after every
// start so that a crash mid-start still leaves the pids behind. Best
// effort: the state file is for tools, the cluster does not need it.
func (c *Cluster) writeState() {
	st := State{PID: os.Getpid(), APIServer: c.apiserver, Kubeconfig: c.kubeconfig}
	if c.etcd != nil {
		st.Etcd = c.etcd.ClientURL
	}
	for _, p := range c.Processes() {
		st.Processes = append(st.Processes, ProcessState{Name: p.Name, PID: p.PID(), Log: p.Log})
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		tmp := filepath.Join(c.stateDir, "state.json.tmp")
		if err = os.WriteFile(tmp, data, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(c.stateDir, "state.json"))
		}
	}
	if err != nil {
		c.log.Warn("cannot write cluster state", "err", err)
	}
}

// prepareDir creates the layout and wipes the previous run's state, after
// making sure no other launcher still uses this dir.
func (c *Cluster) prepareDir(context.Context) error {
	if st, err := ReadState(c.cfg.Dir); err == nil && st.PID != os.Getpid() && Alive(st.PID) {
		return fmt.Errorf("a cluster (launcher pid %d) is still running in %s: stop it first", st.PID, c.cfg.Dir)
	}
	if err := os.RemoveAll(c.stateDir); err != nil {
		return fmt.Errorf("wipe old state: %w", err)
	}
	if err := os.Remove(c.kubeconfig); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old kubeconfig: %w", err)
	}
	for _, d := range []string{c.stateDir, c.logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

// writeCredentials writes the cluster's CA, certificates and
// service-account key, and the admin kubeconfig that embeds them.
func (c *Cluster) writeCredentials(context.Context) error {
	serviceIP, err := kubernetesServiceIP(c.cfg.ServiceCIDR)
	if err != nil {
		return err
	}
	if c.certs, err = newCerts(filepath.Join(c.stateDir, "pki"), serviceIP); err != nil {
		return err
	}
	return c.writeKubeconfig()
}

// writeKubeconfig writes the admin kubeconfig for the apiserver with the
// certificates embedded, so the file works when copied elsewhere.
func (c *Cluster) writeKubeconfig() error {
	cert, err := os.ReadFile(c.certs.adminCert)
	if err != nil {
		return fmt.Errorf("read admin certificate: %w", err)
	}
	key, err := os.ReadFile(c.certs.adminKey)
	if err != nil {
		return fmt.Errorf("read admin key: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: c.apiserver, CertificateAuthorityData: c.certs.ca.PEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[clusterName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: "admin"}
	cfg.CurrentContext = clusterName
	if err := clientcmd.WriteToFile(*cfg, c.kubeconfig); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", c.kubeconfig, err)
	}
	return nil
}

// loadClient makes the admin client from the kubeconfig.
func (c *Cluster) loadClient(context.Context) error {
	rc, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	// Tests create hundreds of pods and nodes; client-go's default 5 QPS
	// would dominate their run time.
	rc.QPS, rc.Burst = 500, 1000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("client for %s: %w", c.apiserver, err)
	}
	c.restConfig, c.clientset = rc, cs
	return nil
}
