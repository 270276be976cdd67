package fsck

import "testing"

func TestShimHelperOf(t *testing.T) {
	match := shimHelperOf("default", "web")
	for _, tc := range []struct {
		argv []string
		want bool
	}{
		{[]string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "default", "-address", "/run/containerd/containerd.sock", "-publish-binary", "/usr/bin/containerd", "-id", "web", "start"}, true},
		{[]string{"containerd-shim-runc-v2", "-namespace", "default", "-id", "web", "-bundle", "/run/b", "delete"}, true},
		{[]string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "default", "-id", "web2", "start"}, false},
		{[]string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "web", "start"}, false},
		{[]string{"/usr/bin/runc", "-namespace", "default", "-id", "web"}, false},
		{[]string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "default", "-id"}, false},
		{nil, false},
	} {
		if got := match(tc.argv); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.argv, got, tc.want)
		}
	}
}
