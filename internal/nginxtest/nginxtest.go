// Package nginxtest runs Debian's nginx (package nginx-light) for tests that put it in front
// of a server, or behind a client, of this project.
package nginxtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Binary returns the path of nginx, or skips the test. CI sets PUSHPROXY_REQUIRE_NGINX=1 so
// that a missing nginx fails instead.
func Binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/nginx", "/usr/bin/nginx"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("PUSHPROXY_REQUIRE_NGINX") != "" {
		t.Fatal("no nginx and PUSHPROXY_REQUIRE_NGINX is set: apt-get install nginx-light")
	}
	t.Skip("no nginx: apt-get install nginx-light to run this test")
	return ""
}

// FreeAddr returns a loopback address with a port free at the time of the call.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start runs nginx (Binary) in the foreground with one worker, its files in dir, and http
// as the contents of its http block (access logging off and the temporary paths in dir are
// set already). It waits until addr, where http makes it listen, accepts connections, and
// stops nginx when the test ends, showing its error log if the test failed.
func Start(t testing.TB, dir, addr, http string) {
	t.Helper()
	bin := Binary(t)
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	conf := filepath.Join(dir, "nginx.conf")
	errorLog := filepath.Join(dir, "error.log")
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`
daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
%[2]s
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[3]s
}
`, dir, user, http)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt) // fast shutdown: open streams do not hold it
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(errorLog)
			t.Logf("nginx error.log:\n%s", b)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		select {
		case <-exited:
			b, _ := os.ReadFile(errorLog)
			t.Fatalf("nginx exited:\n%s", b)
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx does not listen on %s", addr)
		}
	}
}
