package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	translator "k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

// The kubelet's API, the part kube-apiserver proxies to for `kubectl logs`
// and `kubectl port-forward`: /containerLogs and /portForward, over HTTPS on
// 127.0.0.1 (the Nodes' InternalIP, a port of the agent's own, in each
// Node's daemonEndpoints). kube-apiserver does not verify a kubelet's
// serving certificate unless told to, and the test's does not; this one is
// self-signed.
func (a *agent) serveKubelet() (int, error) {
	cert, err := selfSigned()
	if err != nil {
		return 0, err
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return 0, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/containerLogs/", a.containerLogs)
	mux.HandleFunc("/portForward/", a.portForward)
	go func() { _ = http.Serve(l, mux) }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "nodeagent"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// runtimeOf finds the pod the agent runs by namespace and name (and UID
// when given).
func (a *agent) runtimeOf(ns, name, uid string) *podRuntime {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, rt := range a.pods {
		p := rt.snapshot()
		if p.Namespace == ns && p.Name == name && (uid == "" || string(p.UID) == uid) {
			return rt
		}
	}
	return nil
}

// containerLogs serves /containerLogs/NS/POD/CONTAINER: the container's
// output (every run of it), `tailLines`, and `follow` until the client
// goes or the pod stops.
func (a *agent) containerLogs(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/containerLogs/"), "/")
	if len(parts) != 3 {
		http.Error(w, "want /containerLogs/NAMESPACE/POD/CONTAINER", http.StatusBadRequest)
		return
	}
	rt := a.runtimeOf(parts[0], parts[1], "")
	if rt == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s is not running on this node", parts[0], parts[1]), http.StatusNotFound)
		return
	}
	path := filepath.Join(rt.dir, parts[2]+".log")
	f, err := os.Open(path)
	if err != nil {
		http.Error(w, fmt.Sprintf("container %s has no log yet", parts[2]), http.StatusNotFound)
		return
	}
	defer f.Close()
	q := r.URL.Query()
	w.Header().Set("Content-Type", "text/plain")
	if n, err := strconv.Atoi(q.Get("tailLines")); err == nil && n >= 0 {
		b, _ := io.ReadAll(f)
		lines := strings.SplitAfter(string(b), "\n")
		if len(lines) > 0 && lines[len(lines)-1] == "" {
			lines = lines[:len(lines)-1]
		}
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		_, _ = io.WriteString(w, strings.Join(lines, ""))
	} else {
		_, _ = io.Copy(w, f)
	}
	if q.Get("follow") != "true" {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-rt.done:
			_, _ = io.Copy(w, f)
			return
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := io.Copy(w, f); err != nil {
			return
		}
	}
}

// portForward serves /portForward/NS/POD[/UID] as the kubelet does, over
// SPDY or WebSockets (and WebSockets tunnelling SPDY, as kube-apiserver
// sends them to kubelets of 1.31 and later).
func (a *agent) portForward(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/portForward/"), "/")
	if len(parts) < 2 {
		http.Error(w, "want /portForward/NAMESPACE/POD", http.StatusBadRequest)
		return
	}
	uid := ""
	if len(parts) > 2 {
		uid = parts[2]
	}
	rt := a.runtimeOf(parts[0], parts[1], uid)
	if rt == nil {
		http.Error(w, "pod does not exist", http.StatusNotFound)
		return
	}
	pod := rt.snapshot()
	forwarder := podForwarder{rt: rt}
	serve := func(w http.ResponseWriter, r *http.Request, opts *portforward.V4Options) {
		portforward.ServePortForward(w, r, forwarder, pod.Name, string(pod.UID), opts, 4*time.Hour, 30*time.Second, portforward.SupportedProtocols)
	}
	if wsstream.IsWebSocketRequestWithTunnelingProtocol(r) {
		translator.NewTunnelingHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			serve(w, r, &portforward.V4Options{})
		})).ServeHTTP(w, r)
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	serve(w, r, opts)
}

type podForwarder struct{ rt *podRuntime }

// PortForward copies between the stream and the pod's port, dialled from
// the pod network.
func (f podForwarder) PortForward(ctx context.Context, name, uid string, port int32, stream io.ReadWriteCloser) error {
	f.rt.mu.Lock()
	ip := f.rt.ip
	f.rt.mu.Unlock()
	conn, err := f.rt.a.net.dial(net.JoinHostPort(ip, strconv.Itoa(int(port))), 5*time.Second)
	if err != nil {
		log.Printf("nodeagent: port-forward to %s:%d of %s: %v", ip, port, name, err)
		return err
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
