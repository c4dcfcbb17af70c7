package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

const (
	// provisionedBy marks the volumes the agent made.
	provisionedBy  = "raftkv.test/nodeagent"
	kubeletVersion = "v1.36.3"
)

type agent struct {
	cfg    config
	client kubernetes.Interface
	net    *network
	proxy  *proxy

	kubeletPort int32

	mu   sync.Mutex
	pods map[string]*podRuntime // by pod UID
	// hosts is the /etc/hosts every pod sees, rewritten when it changes.
	hosts string
}

func (a *agent) ours(node string) bool {
	for _, n := range a.cfg.nodes {
		if n == node {
			return true
		}
	}
	return false
}

func (a *agent) registerNodes(ctx context.Context) error {
	for _, name := range a.cfg.nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"kubernetes.io/hostname": name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
		}}
		if _, err := a.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("register node %s: %w", name, err)
		}
		if err := a.nodeStatus(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

func (a *agent) nodeStatus(ctx context.Context, name string) error {
	node, err := a.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	node.Status.Capacity = capacity
	node.Status.Allocatable = capacity
	// kube-apiserver reaches the kubelet API at the InternalIP (the test's
	// control plane prefers it) and the port below; pods see their node
	// at the bridge's gateway (status.hostIP).
	node.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
		{Type: corev1.NodeHostName, Address: name},
	}
	node.Status.DaemonEndpoints.KubeletEndpoint.Port = a.kubeletPort
	node.Status.NodeInfo.KubeletVersion = kubeletVersion
	node.Status.NodeInfo.OperatingSystem = "linux"
	node.Status.NodeInfo.Architecture = "amd64"
	node.Status.Phase = corev1.NodeRunning
	conditions := []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "the test node agent is running"},
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID"},
	}
	for i := range conditions {
		conditions[i].LastHeartbeatTime = now
		conditions[i].LastTransitionTime = now
		for _, old := range node.Status.Conditions {
			if old.Type == conditions[i].Type && old.Status == conditions[i].Status {
				conditions[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	node.Status.Conditions = conditions
	_, err = a.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

// heartbeats renews each Node's Lease every 10 s and its status every 30 s,
// as the kubelet does.
func (a *agent) heartbeats(ctx context.Context) {
	last := time.Time{}
	for {
		for _, name := range a.cfg.nodes {
			if err := a.renewLease(ctx, name); err != nil && ctx.Err() == nil {
				log.Printf("nodeagent: lease of %s: %v", name, err)
			}
			if time.Since(last) > 30*time.Second {
				if err := a.nodeStatus(ctx, name); err != nil && ctx.Err() == nil {
					log.Printf("nodeagent: status of %s: %v", name, err)
				}
			}
		}
		if time.Since(last) > 30*time.Second {
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

func (a *agent) renewLease(ctx context.Context, name string) error {
	leases := a.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	duration := int32(40)
	lease, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       &name,
				LeaseDurationSeconds: &duration,
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// sync does one round: scheduling, volumes, and the pods of our nodes.
func (a *agent) sync(ctx context.Context) error {
	pods, err := a.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	if err := a.schedule(ctx, pods.Items); err != nil {
		log.Printf("nodeagent: schedule: %v", err)
	}
	if err := a.volumes(ctx); err != nil {
		log.Printf("nodeagent: volumes: %v", err)
	}
	services, err := a.client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	slices, err := a.client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	a.proxy.sync(ctx, services.Items, slices.Items)
	a.updateHosts(pods.Items, services.Items)

	seen := map[string]bool{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if !a.ours(pod.Spec.NodeName) {
			continue
		}
		uid := string(pod.UID)
		seen[uid] = true
		a.mu.Lock()
		rt := a.pods[uid]
		if rt == nil {
			if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
				a.mu.Unlock()
				// Finished before this agent started: only a deletion to
				// acknowledge.
				if pod.DeletionTimestamp != nil {
					a.finalDelete(ctx, pod)
				}
				continue
			}
			rt = newPodRuntime(a, pod)
			a.pods[uid] = rt
			go rt.run()
		}
		a.mu.Unlock()
		rt.update(pod)
	}
	a.mu.Lock()
	for uid, rt := range a.pods {
		if !seen[uid] {
			// Deleted outright (grace 0 or force): stop at once.
			rt.gone()
			delete(a.pods, uid)
		}
	}
	a.mu.Unlock()
	return nil
}

func (a *agent) forget(uid types.UID) {
	a.mu.Lock()
	delete(a.pods, string(uid))
	a.mu.Unlock()
}

func (a *agent) stopAll() {
	a.mu.Lock()
	rts := make([]*podRuntime, 0, len(a.pods))
	for _, rt := range a.pods {
		rts = append(rts, rt)
	}
	a.mu.Unlock()
	for _, rt := range rts {
		rt.gone()
	}
	for _, rt := range rts {
		<-rt.done
	}
}

// schedule binds each pending pod of the default scheduler to the
// schedulable node (not cordoned, matching its nodeSelector) with the
// fewest pods; among equals, the one with fewest pods of the same owner.
func (a *agent) schedule(ctx context.Context, pods []corev1.Pod) error {
	nodes, err := a.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	load := map[string]int{}
	sameOwner := map[string]map[string]int{}
	ownerOf := func(p *corev1.Pod) string {
		if ref := metav1.GetControllerOf(p); ref != nil {
			return p.Namespace + "/" + string(ref.UID)
		}
		return ""
	}
	for i := range pods {
		p := &pods[i]
		if p.Spec.NodeName != "" && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			load[p.Spec.NodeName]++
			if o := ownerOf(p); o != "" {
				if sameOwner[o] == nil {
					sameOwner[o] = map[string]int{}
				}
				sameOwner[o][p.Spec.NodeName]++
			}
		}
	}
	for i := range pods {
		p := &pods[i]
		if p.Spec.NodeName != "" || p.DeletionTimestamp != nil {
			continue
		}
		if p.Spec.SchedulerName != "" && p.Spec.SchedulerName != corev1.DefaultSchedulerName {
			continue
		}
		var candidates []string
		for _, n := range nodes.Items {
			if n.Spec.Unschedulable || !a.ours(n.Name) || !matches(p.Spec.NodeSelector, n.Labels) {
				continue
			}
			candidates = append(candidates, n.Name)
		}
		if len(candidates) == 0 {
			continue
		}
		owner := ownerOf(p)
		sort.SliceStable(candidates, func(x, y int) bool {
			cx, cy := sameOwner[owner][candidates[x]], sameOwner[owner][candidates[y]]
			if cx != cy {
				return cx < cy
			}
			return load[candidates[x]] < load[candidates[y]]
		})
		node := candidates[0]
		err := a.client.CoreV1().Pods(p.Namespace).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, UID: p.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: node},
		}, metav1.CreateOptions{})
		if err != nil {
			log.Printf("nodeagent: bind %s/%s to %s: %v", p.Namespace, p.Name, node, err)
			continue
		}
		load[node]++
		if owner != "" {
			if sameOwner[owner] == nil {
				sameOwner[owner] = map[string]int{}
			}
			sameOwner[owner][node]++
		}
	}
	return nil
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// volumes provisions a directory-backed PersistentVolume for each pending
// claim, and deletes the directory and the volume of each released one
// the agent made.
func (a *agent) volumes(ctx context.Context) error {
	claims, err := a.client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	volumes, err := a.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	claimed := map[types.UID]bool{}
	for _, pv := range volumes.Items {
		if pv.Spec.ClaimRef != nil {
			claimed[pv.Spec.ClaimRef.UID] = true
		}
	}
	live := map[types.UID]bool{}
	for _, c := range claims.Items {
		live[c.UID] = true
		if c.Spec.VolumeName != "" || claimed[c.UID] || c.DeletionTimestamp != nil {
			continue
		}
		name := "pvc-" + string(c.UID)
		dir := filepath.Join(a.cfg.root, "volumes", name)
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		// Any user may write in it, as in a fresh volume of most provisioners.
		_ = os.Chmod(dir, 0o777)
		size := c.Spec.Resources.Requests[corev1.ResourceStorage]
		class := ""
		if c.Spec.StorageClassName != nil {
			class = *c.Spec.StorageClassName
		}
		hostPathType := corev1.HostPathDirectory
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "nodeagent"},
				Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": provisionedBy}},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
				AccessModes:                   c.Spec.AccessModes,
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
				StorageClassName:              class,
				ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
					Namespace: c.Namespace, Name: c.Name, UID: c.UID},
				PersistentVolumeSource: corev1.PersistentVolumeSource{
					HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType},
				},
			},
		}
		if _, err := a.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("provision %s for %s/%s: %w", name, c.Namespace, c.Name, err)
		}
		log.Printf("nodeagent: provisioned %s for %s/%s", name, c.Namespace, c.Name)
	}
	for _, pv := range volumes.Items {
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != provisionedBy || pv.Spec.ClaimRef == nil || live[pv.Spec.ClaimRef.UID] {
			continue
		}
		if pv.Status.Phase != corev1.VolumeReleased && pv.Status.Phase != corev1.VolumeFailed {
			continue
		}
		if pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete {
			if pv.Spec.HostPath != nil && strings.HasPrefix(pv.Spec.HostPath.Path, filepath.Join(a.cfg.root, "volumes")+"/") {
				if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
					return err
				}
			}
			err := a.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			log.Printf("nodeagent: deleted %s (its claim is gone)", pv.Name)
		}
	}
	return nil
}

// updateHosts computes the names the cluster DNS would answer for pods
// (hostname.subdomain.namespace.svc) and services' cluster IPs the agent
// serves, and rewrites every running pod's /etc/hosts when they change.
func (a *agent) updateHosts(pods []corev1.Pod, services []corev1.Service) {
	var lines []string
	lines = append(lines, "127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback")
	lines = append(lines, "10.0.0.1 kubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local")
	for _, p := range pods {
		if p.Status.PodIP == "" || p.DeletionTimestamp != nil && p.Status.Phase != corev1.PodRunning {
			continue
		}
		hostname := p.Spec.Hostname
		if hostname == "" {
			hostname = p.Name
		}
		if p.Spec.Subdomain != "" {
			fq := fmt.Sprintf("%s.%s.%s.svc", hostname, p.Spec.Subdomain, p.Namespace)
			lines = append(lines, fmt.Sprintf("%s %s %s.cluster.local", p.Status.PodIP, fq, fq))
		}
	}
	for _, svc := range services {
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone || svc.Name == "kubernetes" && svc.Namespace == metav1.NamespaceDefault {
			continue
		}
		fq := fmt.Sprintf("%s.%s.svc", svc.Name, svc.Namespace)
		lines = append(lines, fmt.Sprintf("%s %s %s.cluster.local", svc.Spec.ClusterIP, fq, fq))
	}
	sort.Strings(lines[3:])
	hosts := strings.Join(lines, "\n") + "\n"
	a.mu.Lock()
	changed := hosts != a.hosts
	a.hosts = hosts
	rts := make([]*podRuntime, 0, len(a.pods))
	for _, rt := range a.pods {
		rts = append(rts, rt)
	}
	a.mu.Unlock()
	if changed {
		for _, rt := range rts {
			rt.writeHosts(hosts)
		}
	}
}

func (a *agent) currentHosts() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hosts
}

// finalDelete removes a pod whose containers have stopped, as the kubelet
// does once a graceful deletion is done.
func (a *agent) finalDelete(ctx context.Context, pod *corev1.Pod) {
	zero := int64(0)
	uid := pod.UID
	err := a.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		log.Printf("nodeagent: delete %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}
