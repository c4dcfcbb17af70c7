// Command nodeagent plays the kubelet (and the few parts of kube-scheduler,
// kube-proxy and a volume provisioner a test needs) for the Nodes it
// registers, so that Pods on a test control plane run as real local
// processes. A test tool, never shipped.
//
//	nodeagent --kubeconfig F --root DIR --nodes node-0,node-1,node-2 \
//	    --image raftkv/raftkv=/path/raftkv[,/path/other] ...
//
// What it does:
//   - registers the Nodes (Ready, with capacity) and renews their Leases in
//     kube-node-lease;
//   - binds pending Pods of the default scheduler to the schedulable Node
//     with the fewest Pods (cordoned Nodes are skipped);
//   - provisions a PersistentVolume (a directory under DIR/volumes) for each
//     pending claim, and removes the directory and the volume once the
//     claim is gone;
//   - runs the containers of the Pods bound to its Nodes: each Pod in a
//     network namespace of its own on a bridge, each container chrooted
//     into a root made of the host's /usr, /lib, /bin and /etc/ssl, the
//     image's binaries in /app, its volumes, and an /etc/hosts that
//     resolves every Pod's hostname.subdomain.namespace.svc name, as the
//     cluster DNS would; probes, restarts with back-off, termination
//     messages, SIGTERM then SIGKILL after the grace period;
//   - serves the kubelet API kube-apiserver proxies to for `kubectl logs`
//     and `kubectl port-forward` (on 127.0.0.1, the Nodes' InternalIP);
//   - serves the `kubernetes` Service (10.0.0.1:443) to the Pods, forwarded
//     to kube-apiserver on loopback, and as kube-proxy would, every other
//     Service's cluster IP in the pod network and its node ports on the
//     host's 127.0.0.1, round-robin over its ready endpoints.
//
// Everything lives in network namespaces it creates (named after its PID);
// the host's own network is not touched. It needs root.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

type imageFlag map[string][]string

func (i imageFlag) String() string { return fmt.Sprint(map[string][]string(i)) }

func (i imageFlag) Set(v string) error {
	repo, bins, ok := strings.Cut(v, "=")
	if !ok || repo == "" || bins == "" {
		return fmt.Errorf("--image wants REPOSITORY=BINARY[,BINARY...], got %q", v)
	}
	for _, b := range strings.Split(bins, ",") {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("--image %s: %w", repo, err)
		}
		i[repo] = append(i[repo], b)
	}
	return nil
}

type config struct {
	kubeconfig string
	root       string
	nodes      []string
	images     imageFlag
	apiserver  string
	restartMax time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "container" {
		// The second stage of a container start, inside its namespaces.
		if err := containerMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "nodeagent container:", err)
			os.Exit(127)
		}
		return
	}
	cfg := config{images: imageFlag{}}
	var nodes string
	flag.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig of the agent (admin)")
	flag.StringVar(&cfg.root, "root", "", "directory for pods and volumes")
	flag.StringVar(&nodes, "nodes", "node-0", "comma-separated names of the Nodes to register")
	flag.Var(cfg.images, "image", "REPOSITORY=BINARY[,BINARY...]: an image's binaries (the first is its entrypoint); repeatable")
	flag.StringVar(&cfg.apiserver, "apiserver", "", "host:port of kube-apiserver on loopback, served to pods as 10.0.0.1:443")
	flag.DurationVar(&cfg.restartMax, "restart-backoff-max", 10*time.Second, "the longest wait before restarting a crashed container (the kubelet's is 5m)")
	flag.Parse()
	cfg.nodes = strings.Split(nodes, ",")
	if cfg.kubeconfig == "" || cfg.root == "" || cfg.apiserver == "" {
		log.Fatal("--kubeconfig, --root and --apiserver are required")
	}
	if err := run(cfg); err != nil {
		log.Fatal(err)
	}
}

func run(cfg config) error {
	rest, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return err
	}
	rest.QPS, rest.Burst = 100, 200
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	network, err := newNetwork(fmt.Sprintf("rkv%d", os.Getpid()))
	if err != nil {
		return err
	}
	defer network.close()
	if err := network.serve("10.0.0.1:443", cfg.apiserver); err != nil {
		return err
	}
	a := &agent{cfg: cfg, client: client, net: network, proxy: newProxy(network), pods: map[string]*podRuntime{}}
	port, err := a.serveKubelet()
	if err != nil {
		return fmt.Errorf("the kubelet API: %w", err)
	}
	a.kubeletPort = int32(port)
	if err := a.registerNodes(ctx); err != nil {
		return err
	}
	log.Printf("nodeagent: nodes %v ready; bridge namespace %s", cfg.nodes, network.bridgeNS)
	// The bridge namespace is how a test reaches pod IPs: say it where the
	// harness reads it.
	if err := os.WriteFile(cfg.root+"/bridge-netns", []byte(network.bridgeNS), 0o644); err != nil {
		return err
	}
	go a.heartbeats(ctx)
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := a.sync(ctx); err != nil && ctx.Err() == nil {
			log.Printf("nodeagent: sync: %v", err)
		}
		select {
		case <-ctx.Done():
			a.stopAll()
			return nil
		case <-tick.C:
		}
	}
}
