package images

import (
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"
)

// ChartAppVersion is the appVersion of the chart in moduleDir: the tag
// its values give an image whose tag is "" (muster.image in
// _helpers.tpl), so the tag images are built with by default.
func ChartAppVersion(moduleDir string) (string, error) {
	file := filepath.Join(moduleDir, ChartDir, "Chart.yaml")
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("images: the chart's appVersion: %w", err)
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &chart); err != nil {
		return "", fmt.Errorf("images: %s: %w", file, err)
	}
	if chart.AppVersion == "" {
		return "", fmt.Errorf("images: %s has no appVersion: give a tag", file)
	}
	return chart.AppVersion, nil
}
