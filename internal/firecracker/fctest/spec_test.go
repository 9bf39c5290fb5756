package fctest

import (
	"context"
	"strings"
	"testing"
)

func loadSpec(t *testing.T) *Spec {
	t.Helper()
	spec, err := DefaultSpec()
	if err != nil {
		t.Skipf("firecracker API definition unavailable: %v", err)
	}
	return spec
}

func TestSpecValidate(t *testing.T) {
	spec := loadSpec(t)
	if spec.Version != "1.16.1" {
		t.Errorf("spec version = %q, want 1.16.1", spec.Version)
	}

	tests := []struct {
		name    string
		method  string
		path    string
		body    string
		wantErr string
	}{
		{"describe instance", "GET", "/", "", ""},
		{"machine config", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`, ""},
		{"drive", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r.img","is_root_device":false,"is_read_only":true}`, ""},
		{"instance start", "PUT", "/actions", `{"action_type":"InstanceStart"}`, ""},
		{"entropy", "PUT", "/entropy", `{}`, ""},
		{"unknown field", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"ht_enabled":false}`, "ht_enabled"},
		{"wrong type", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":256}`, "vcpu_count"},
		{"above maximum", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":256}`, "vcpu_count"},
		{"missing required", "PUT", "/vsock", `{"uds_path":"/v.sock"}`, "guest_cid"},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, "action_type"},
		{"unknown path", "PUT", "/no-such-thing", `{}`, "no matching operation"},
		{"wrong method", "POST", "/actions", `{"action_type":"InstanceStart"}`, "method not allowed"},
		{"nested unknown field", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r.img","is_root_device":false,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"burst":3}}}`, "burst"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := ""
			if tt.body != "" {
				ct = "application/json"
			}
			err := spec.Validate(context.Background(), tt.method, tt.path, ct, []byte(tt.body))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted the request, want an error naming %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate error = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
