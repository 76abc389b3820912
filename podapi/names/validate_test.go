package names

import (
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		in, wantErr string
	}{
		{"ok-name_1.x", ""},
		{"", "is empty"},
		{strings.Repeat("a", 64), "limit is 63"},
		{"has/slash", "not a valid name"},
		{"-leading", "not a valid name"},
	}
	for _, tc := range tests {
		err := ValidateName("group", tc.in, MaxGroupNameLen)
		if tc.wantErr == "" && err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", tc.in, err)
		}
		if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "group")) {
			t.Errorf("ValidateName(%q) = %v, want an error naming the field and containing %q", tc.in, err, tc.wantErr)
		}
	}
}
