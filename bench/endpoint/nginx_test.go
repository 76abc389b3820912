package endpoint

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

const nginxBin = "/usr/sbin/nginx"

// nginxConf is a minimal reverse proxy tuned the way a careful user would:
// as many workers as the Go proxy has threads (GOMAXPROCS = cores), pooled
// keep-alive connections to the runtime, no request limit per connection
// on either side (Go has none), buffering only where it does not hurt (the
// stream is passed through unbuffered), no access log.
const nginxConf = `daemon off;
master_process on;
worker_processes %[1]d;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	keepalive_requests 1000000;
	upstream runtime {
		server 127.0.0.1:%[3]d;
		keepalive 64;
		keepalive_requests 1000000;
	}
	server {
		listen 127.0.0.1:%[4]d backlog=4096;
		proxy_http_version 1.1;
		proxy_set_header Connection "";
		location / {
			proxy_pass http://runtime;
		}
		location /v1/stream {
			proxy_pass http://runtime;
			proxy_buffering off;
		}
	}
}
`

// startNginx runs Debian's nginx in front of the runtime on runtimePort and
// returns its base URL and worker count.
func startNginx(b *testing.B, runtimePort int) (string, int) {
	b.Helper()
	if _, err := exec.LookPath(nginxBin); err != nil {
		b.Fatalf("%s not found: run make bench-deps (apt-get install nginx-light wrk)", nginxBin)
	}
	dir := b.TempDir()
	// Workers drop to nobody when nginx runs as root; they need no file
	// here, but the prefix must be reachable for the temp paths.
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	workers, port := runtime.GOMAXPROCS(0), freePort(b)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, workers, dir, runtimePort, port), 0o644); err != nil {
		b.Fatal(err)
	}
	p := start(b, nil, nginxBin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitOK(b, base+"/v1/completions", 20*time.Second, p)
	return base, workers
}
