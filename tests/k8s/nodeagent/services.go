package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The part of kube-proxy a test needs: each Service port with a cluster IP
// is served on that IP in the pod network, and each node port on the
// host's 127.0.0.1 (the Nodes' one address a test can reach), forwarded
// round-robin to the Service's ready endpoints (its EndpointSlices).
type proxy struct {
	net *network

	mu        sync.Mutex
	listeners map[string]*serviceListener // "ip:port", host side prefixed "host/"
}

type serviceListener struct {
	l        net.Listener
	backends atomic.Pointer[[]string]
	next     atomic.Uint32
	seen     bool
}

func newProxy(n *network) *proxy {
	return &proxy{net: n, listeners: map[string]*serviceListener{}}
}

// sync makes the listeners match the Services, and their backends the
// ready endpoints.
func (p *proxy) sync(ctx context.Context, services []corev1.Service, slices []discoveryv1.EndpointSlice) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.listeners {
		l.seen = false
	}
	for _, svc := range services {
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		if svc.Namespace == metav1.NamespaceDefault && svc.Name == "kubernetes" {
			continue // served by the agent itself, to kube-apiserver
		}
		for _, port := range svc.Spec.Ports {
			if port.Protocol != "" && port.Protocol != corev1.ProtocolTCP {
				continue
			}
			backends := readyBackends(svc.Name, port.Name, slices, svc.Namespace)
			p.ensure("pod/"+net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(port.Port))), backends)
			if port.NodePort > 0 {
				p.ensure("host/"+net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port.NodePort))), backends)
			}
		}
	}
	for key, l := range p.listeners {
		if !l.seen {
			l.l.Close()
			delete(p.listeners, key)
		}
	}
}

func readyBackends(service, portName string, slices []discoveryv1.EndpointSlice, ns string) []string {
	var out []string
	for _, s := range slices {
		if s.Namespace != ns || s.Labels[discoveryv1.LabelServiceName] != service {
			continue
		}
		var port int32 = -1
		for _, sp := range s.Ports {
			name := ""
			if sp.Name != nil {
				name = *sp.Name
			}
			if name == portName && sp.Port != nil {
				port = *sp.Port
			}
		}
		if port < 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, addr := range ep.Addresses {
				out = append(out, net.JoinHostPort(addr, strconv.Itoa(int(port))))
			}
		}
	}
	sort.Strings(out)
	return out
}

func (p *proxy) ensure(key string, backends []string) {
	l, ok := p.listeners[key]
	if !ok {
		var err error
		l, err = p.listen(key)
		if err != nil {
			log.Printf("nodeagent: service %s: %v", key, err)
			return
		}
		p.listeners[key] = l
	}
	l.seen = true
	l.backends.Store(&backends)
}

func (p *proxy) listen(key string) (*serviceListener, error) {
	side, addr, _ := strings.Cut(key, "/")
	var l net.Listener
	var err error
	if side == "host" {
		l, err = net.Listen("tcp", addr)
	} else {
		err = inNetns(p.net.bridgeNS, func() error {
			var err error
			l, err = net.Listen("tcp", addr)
			return err
		})
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s (%s): %w", addr, side, err)
	}
	sl := &serviceListener{l: l}
	empty := []string{}
	sl.backends.Store(&empty)
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go sl.forward(p.net, in)
		}
	}()
	return sl, nil
}

// forward connects to the next ready backend (trying each once), or
// closes the connection when there is none, as kube-proxy rejects.
func (sl *serviceListener) forward(n *network, in net.Conn) {
	backends := *sl.backends.Load()
	for range backends {
		b := backends[int(sl.next.Add(1))%len(backends)]
		out, err := n.dial(b, 2*time.Second)
		if err == nil {
			pipe(in, out)
			return
		}
	}
	in.Close()
}
