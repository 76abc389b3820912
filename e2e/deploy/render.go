// Package deploy renders muster's install manifests the way a user gets
// them: the Helm chart (deploy/helm/muster) through the Helm SDK, the
// kustomize bases (deploy/kustomize) through kustomize's own library, and
// the example manifests (deploy/examples) as they are. Its tests apply all
// of them to a real apiserver with server-side dry run.
package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Release names a chart rendering.
type Release struct {
	Name      string
	Namespace string
	// Service is what the chart's app.kubernetes.io/managed-by label says
	// ("" means Helm).
	Service string
}

// RenderChart renders the chart in dir with values over its defaults, as
// `helm template` does: CRDs first (from crds/), then the templates in
// Helm's install order. It returns the manifests as one YAML stream.
func RenderChart(dir string, rel Release, values map[string]any) (string, error) {
	chrt, err := loader.Load(dir)
	if err != nil {
		return "", fmt.Errorf("load chart %s: %w", dir, err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	vals, err := chartutil.ToRenderValues(chrt, values, chartutil.ReleaseOptions{
		Name: rel.Name, Namespace: rel.Namespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return "", fmt.Errorf("chart %s: values: %w", dir, err)
	}
	if rel.Service != "" {
		vals["Release"].(map[string]any)["Service"] = rel.Service
	}
	files, err := engine.Render(chrt, vals)
	if err != nil {
		return "", fmt.Errorf("render chart %s: %w", dir, err)
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return "", fmt.Errorf("chart %s: sort manifests: %w", dir, err)
	}
	if len(hooks) > 0 {
		return "", fmt.Errorf("chart %s: has hooks (%s); the kustomize base could not reproduce them", dir, hooks[0].Path)
	}
	var out bytes.Buffer
	for _, crd := range chrt.CRDObjects() {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", crd.Filename, bytes.TrimSpace(crd.File.Data))
	}
	for _, m := range manifests {
		fmt.Fprintf(&out, "---\n%s\n", strings.TrimSpace(m.Content))
	}
	return out.String(), nil
}

// Kustomize builds the kustomization in dir, as `kubectl kustomize` does.
func Kustomize(dir string) (string, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return "", fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		return "", fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return string(out), nil
}

// ReadFile reads a manifest file.
func ReadFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// Objects splits a YAML stream into objects, skipping empty documents.
func Objects(stream string) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLReader(bufioReader(stream))
	var out []*unstructured.Unstructured
	for {
		doc, err := dec.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("decode document %d: %w\n%s", len(out)+1, err, doc)
		}
		if s := string(bytes.TrimSpace(j)); s == "null" || s == "{}" {
			continue // an empty document
		}
		// Unstructured's own decoding keeps integers int64, as the
		// apiserver's clients expect.
		o := &unstructured.Unstructured{}
		if err := o.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("decode document %d: %w\n%s", len(out)+1, err, doc)
		}
		out = append(out, o)
	}
}

// Describe names an object as kubectl does: kind/namespace/name.
func Describe(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return fmt.Sprintf("%s %s/%s", o.GetKind(), ns, o.GetName())
	}
	return fmt.Sprintf("%s %s", o.GetKind(), o.GetName())
}

// Examples lists the example manifests.
func Examples(repo string) ([]string, error) {
	return filepath.Glob(filepath.Join(repo, "deploy", "examples", "*.yaml"))
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
