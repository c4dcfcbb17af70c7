package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The pod network: 10.244.0.0/16 on a bridge in a namespace of its own
// (gateway 10.244.0.1); the service range 10.0.0.0/24 is local to that
// namespace, where the agent listens for the Services it serves.
const (
	gatewayIP   = "10.244.0.1"
	podPrefix   = 16
	serviceCIDR = "10.0.0.0/24"
)

type network struct {
	prefix   string
	bridgeNS string

	mu    sync.Mutex
	next  int
	free  []int
	byPod map[string]int // pod namespace name -> address index
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func newNetwork(prefix string) (*network, error) {
	n := &network{prefix: prefix, bridgeNS: prefix + "-net", next: 2, byPod: map[string]int{}}
	steps := [][]string{
		{"netns", "add", n.bridgeNS},
		{"-n", n.bridgeNS, "link", "set", "lo", "up"},
		{"-n", n.bridgeNS, "link", "add", "br0", "type", "bridge"},
		{"-n", n.bridgeNS, "addr", "add", fmt.Sprintf("%s/%d", gatewayIP, podPrefix), "dev", "br0"},
		{"-n", n.bridgeNS, "link", "set", "br0", "up"},
		// Every service IP is an address of this namespace.
		{"-n", n.bridgeNS, "route", "add", "local", serviceCIDR, "dev", "lo", "table", "local"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			n.close()
			return nil, err
		}
	}
	return n, nil
}

// addPod makes a network namespace for a pod, wired to the bridge, and
// returns its name and IP.
func (n *network) addPod(id string) (string, string, error) {
	n.mu.Lock()
	var idx int
	if len(n.free) > 0 {
		idx, n.free = n.free[0], n.free[1:]
	} else {
		idx = n.next
		n.next++
	}
	ns := fmt.Sprintf("%s-p%d", n.prefix, idx)
	n.byPod[ns] = idx
	n.mu.Unlock()
	// Host parts 2..251: never the gateway (.0.1), network or broadcast.
	addr := fmt.Sprintf("10.244.%d.%d", idx/250, idx%250+2)
	host := fmt.Sprintf("veth%d", idx)
	_ = ip("netns", "del", ns) // a leftover of an earlier pod with this index
	steps := [][]string{
		{"netns", "add", ns},
		{"-n", n.bridgeNS, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", n.bridgeNS, "link", "set", host, "master", "br0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", addr, podPrefix), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "default", "via", gatewayIP},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			n.removePod(ns)
			return "", "", fmt.Errorf("pod network %s: %w", id, err)
		}
	}
	return ns, addr, nil
}

func (n *network) removePod(ns string) {
	_ = ip("netns", "del", ns) // the veth pair goes with it
	n.mu.Lock()
	if idx, ok := n.byPod[ns]; ok {
		delete(n.byPod, ns)
		n.free = append(n.free, idx)
	}
	n.mu.Unlock()
}

func (n *network) close() {
	n.mu.Lock()
	var names []string
	for ns := range n.byPod {
		names = append(names, ns)
	}
	n.mu.Unlock()
	for _, ns := range names {
		n.removePod(ns)
	}
	_ = ip("netns", "del", n.bridgeNS)
}

// inNetns runs f on a thread switched into the named network namespace;
// sockets made there stay in it.
func inNetns(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is never unlocked: if switching back failed, it dies
		// with the goroutine instead of serving others in the wrong place.
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/var/run/netns/" + name)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// dial opens a TCP connection to addr from the bridge namespace.
func (n *network) dial(addr string, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := inNetns(n.bridgeNS, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return conn, err
}

// serve listens on listen in the bridge namespace and forwards each
// connection to target on the host's loopback.
func (n *network) serve(listen, target string) error {
	var l net.Listener
	if err := inNetns(n.bridgeNS, func() error {
		var err error
		l, err = net.Listen("tcp", listen)
		return err
	}); err != nil {
		return fmt.Errorf("listen on %s in %s: %w", listen, n.bridgeNS, err)
	}
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				out, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					log.Printf("nodeagent: forward %s -> %s: %v", listen, target, err)
					in.Close()
					return
				}
				pipe(in, out)
			}()
		}
	}()
	return nil
}

func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}
