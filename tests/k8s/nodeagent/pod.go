package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podRuntime runs one pod bound to one of the agent's nodes.
type podRuntime struct {
	a   *agent
	uid types.UID
	dir string

	mu        sync.Mutex
	pod       *corev1.Pod
	netns     string
	ip        string
	started   *metav1.Time
	initDone  bool
	failure   string // why the pod cannot run (unsupported field, ...)
	status    map[string]*containerState
	lastWrite corev1.PodStatus

	changed  chan struct{}
	stopping chan struct{} // closed when the pod is being deleted
	stopOnce sync.Once
	gonef    bool // deleted outright: nothing to write back
	done     chan struct{}
}

type containerState struct {
	name     string
	init     bool
	restarts int32
	current  *corev1.ContainerState
	last     *corev1.ContainerState
	started  bool
	ready    bool
	proc     *os.Process
	exited   chan struct{}
	// liveness failures ask for a restart through this channel.
	restart chan struct{}
}

func newPodRuntime(a *agent, pod *corev1.Pod) *podRuntime {
	return &podRuntime{
		a:        a,
		uid:      pod.UID,
		dir:      filepath.Join(a.cfg.root, "pods", string(pod.UID)),
		pod:      pod.DeepCopy(),
		status:   map[string]*containerState{},
		changed:  make(chan struct{}, 1),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}
}

func (r *podRuntime) name() string { return r.pod.Namespace + "/" + r.pod.Name }

func (r *podRuntime) update(pod *corev1.Pod) {
	r.mu.Lock()
	r.pod = pod.DeepCopy()
	r.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		r.stopOnce.Do(func() { close(r.stopping) })
	}
}

func (r *podRuntime) gone() {
	r.mu.Lock()
	r.gonef = true
	r.mu.Unlock()
	r.stopOnce.Do(func() { close(r.stopping) })
}

func (r *podRuntime) snapshot() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pod.DeepCopy()
}

func (r *podRuntime) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *podRuntime) isStopping() bool {
	select {
	case <-r.stopping:
		return true
	default:
		return false
	}
}

func (r *podRuntime) fail(format string, args ...any) {
	r.mu.Lock()
	r.failure = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	log.Printf("nodeagent: pod %s: %s", r.name(), r.failure)
	r.notify()
}

func (r *podRuntime) run() {
	defer close(r.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.statusWriter(ctx)

	pod := r.snapshot()
	now := metav1.Now()
	r.mu.Lock()
	r.started = &now
	for _, c := range pod.Spec.InitContainers {
		r.status[c.Name] = &containerState{name: c.Name, init: true, restart: make(chan struct{}, 1)}
	}
	for _, c := range pod.Spec.Containers {
		r.status[c.Name] = &containerState{name: c.Name, restart: make(chan struct{}, 1)}
	}
	r.mu.Unlock()

	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		r.fail("%v", err)
	} else if reason := unsupported(pod); reason != "" {
		r.fail("%s", reason)
	} else if ns, addr, err := r.a.net.addPod(r.name()); err != nil {
		r.fail("%v", err)
	} else {
		r.mu.Lock()
		r.netns, r.ip = ns, addr
		r.mu.Unlock()
		r.writeHosts(r.a.currentHosts())
		r.notify()
		r.runContainers(ctx, pod)
	}
	r.stopContainers()
	r.mu.Lock()
	netns, gone := r.netns, r.gonef
	r.mu.Unlock()
	if netns != "" {
		r.a.net.removePod(netns)
	}
	if !gone {
		r.writeStatus(ctx)
		pod := r.snapshot()
		if pod.DeletionTimestamp != nil {
			r.a.finalDelete(ctx, pod)
		}
	}
	r.a.forget(r.uid)
	_ = os.RemoveAll(r.dir)
}

// unsupported names what in the pod the agent cannot honour, so that the
// pod fails saying so instead of running differently from its spec.
func unsupported(pod *corev1.Pod) string {
	if pod.Spec.HostNetwork || pod.Spec.HostPID || pod.Spec.HostIPC {
		return "host namespaces are not supported by the test node agent"
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if p != nil && p.HTTPGet == nil && p.TCPSocket == nil {
				return fmt.Sprintf("container %s: only httpGet and tcpSocket probes are supported by the test node agent", c.Name)
			}
		}
		if c.Lifecycle != nil && (c.Lifecycle.PreStop != nil || c.Lifecycle.PostStart != nil) {
			return fmt.Sprintf("container %s: lifecycle hooks are not supported by the test node agent", c.Name)
		}
	}
	return ""
}

func (r *podRuntime) runContainers(ctx context.Context, pod *corev1.Pod) {
	volumes, err := r.prepareVolumes(ctx, pod)
	if err != nil {
		if !r.isStopping() {
			r.fail("volumes: %v", err)
		}
		return
	}
	for _, c := range pod.Spec.InitContainers {
		ok := r.runToCompletion(ctx, pod, c, volumes)
		if !ok {
			return
		}
	}
	r.mu.Lock()
	r.initDone = true
	r.mu.Unlock()
	r.notify()
	var wg sync.WaitGroup
	for _, c := range pod.Spec.Containers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.keepRunning(ctx, pod, c, volumes)
		}()
	}
	wg.Wait()
	// Every container has finished for good (a Job's pod) or the pod is
	// stopping: wait for the deletion before tearing down.
	<-r.stopping
}

// runToCompletion runs an init container until it succeeds (restarting it
// unless the pod's policy is Never).
func (r *podRuntime) runToCompletion(ctx context.Context, pod *corev1.Pod, c corev1.Container, volumes map[string]string) bool {
	backoff := time.Second
	for {
		code, ok := r.runOnce(ctx, pod, c, volumes)
		if !ok {
			return false
		}
		if code == 0 {
			return true
		}
		if pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
			r.fail("init container %s exited with %d", c.Name, code)
			return false
		}
		if !r.backOff(c.Name, &backoff) {
			return false
		}
	}
}

// keepRunning runs a container and restarts it per the pod's policy.
func (r *podRuntime) keepRunning(ctx context.Context, pod *corev1.Pod, c corev1.Container, volumes map[string]string) {
	backoff := time.Second
	for {
		began := time.Now()
		code, ok := r.runOnce(ctx, pod, c, volumes)
		if !ok {
			return
		}
		switch pod.Spec.RestartPolicy {
		case corev1.RestartPolicyNever:
			return
		case corev1.RestartPolicyOnFailure:
			if code == 0 {
				return
			}
		}
		if time.Since(began) > 2*r.a.cfg.restartMax {
			backoff = time.Second
		}
		if !r.backOff(c.Name, &backoff) {
			return
		}
	}
}

func (r *podRuntime) backOff(name string, backoff *time.Duration) bool {
	r.mu.Lock()
	st := r.status[name]
	st.last = st.current
	st.current = &corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
		Reason:  "CrashLoopBackOff",
		Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", *backoff, name, r.pod.Name),
	}}
	r.mu.Unlock()
	r.notify()
	select {
	case <-r.stopping:
		return false
	case <-time.After(*backoff):
	}
	*backoff *= 2
	if *backoff > r.a.cfg.restartMax {
		*backoff = r.a.cfg.restartMax
	}
	r.mu.Lock()
	st.restarts++
	r.mu.Unlock()
	return true
}

// runOnce starts the container, probes it, and waits for it to exit;
// false when the pod is stopping (or the container cannot start).
func (r *podRuntime) runOnce(ctx context.Context, pod *corev1.Pod, c corev1.Container, volumes map[string]string) (int, bool) {
	if r.isStopping() {
		return 0, false
	}
	proc, spec, err := r.start(ctx, pod, c, volumes)
	if err != nil {
		r.fail("container %s: %v", c.Name, err)
		return 0, false
	}
	startedAt := metav1.Now()
	// Where a test finds the process to kill it as a crash would.
	_ = os.WriteFile(filepath.Join(r.dir, c.Name+".pid"), []byte(fmt.Sprint(proc.Pid)), 0o644)
	r.mu.Lock()
	st := r.status[c.Name]
	if st.current != nil && st.current.Terminated != nil {
		st.last = st.current
	}
	st.current = &corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: startedAt}}
	st.proc = proc
	st.exited = make(chan struct{})
	st.started = c.StartupProbe == nil
	st.ready = false
	exited := st.exited
	r.mu.Unlock()
	r.notify()

	probeCtx, stopProbes := context.WithCancel(ctx)
	if !st.init {
		go r.probe(probeCtx, c, st)
	}
	waited := make(chan *os.ProcessState, 1)
	go func() {
		state, _ := proc.Wait()
		waited <- state
	}()
	var state *os.ProcessState
	select {
	case state = <-waited:
	case <-st.restart:
		r.terminate(proc, gracePeriod(pod))
		state = <-waited
	case <-r.stopping:
		// The pod is being deleted: each container stops on its own, all
		// at once, within the grace period of the deletion.
		r.terminate(proc, gracePeriod(r.snapshot()))
		state = <-waited
	}
	stopProbes()
	close(exited)
	code, signal := 0, 0
	if state != nil {
		if ws, ok := state.Sys().(syscall.WaitStatus); ok {
			if ws.Signaled() {
				signal = int(ws.Signal())
				code = 128 + signal
			} else {
				code = ws.ExitStatus()
			}
		}
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	message := terminationMessage(spec, c, code)
	r.mu.Lock()
	st.proc = nil
	st.ready = false
	st.current = &corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Signal: int32(signal), Reason: reason, Message: message,
		StartedAt: startedAt, FinishedAt: metav1.Now(),
	}}
	r.mu.Unlock()
	r.notify()
	log.Printf("nodeagent: pod %s container %s exited with %d", r.name(), c.Name, code)
	return code, !r.isStopping()
}

func gracePeriod(pod *corev1.Pod) time.Duration {
	if pod.DeletionGracePeriodSeconds != nil {
		return time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}

// terminate sends SIGTERM to the container's process group, then SIGKILL
// once grace has passed.
func (r *podRuntime) terminate(proc *os.Process, grace time.Duration) {
	_ = syscall.Kill(-proc.Pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if syscall.Kill(proc.Pid, 0) != nil {
			return
		}
		// A zombie still answers kill 0; its parent's Wait reaps it.
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", proc.Pid)); err == nil && strings.Contains(string(b), ") Z ") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-proc.Pid, syscall.SIGKILL)
}

// stopContainers stops every running container of the pod, in parallel,
// within the pod's grace period.
func (r *podRuntime) stopContainers() {
	pod := r.snapshot()
	grace := gracePeriod(pod)
	r.mu.Lock()
	var running []*containerState
	for _, st := range r.status {
		if st.proc != nil {
			running = append(running, st)
		}
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, st := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.mu.Lock()
			proc, exited := st.proc, st.exited
			r.mu.Unlock()
			if proc != nil {
				r.terminate(proc, grace)
				<-exited
			}
		}()
	}
	wg.Wait()
}

func terminationMessage(spec *containerSpec, c corev1.Container, code int) string {
	if spec == nil {
		return ""
	}
	b, _ := os.ReadFile(spec.TerminationLog)
	if len(b) > 4096 {
		b = b[:4096]
	}
	msg := string(b)
	if msg == "" && code != 0 && c.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		logs, _ := os.ReadFile(spec.Log)
		lines := strings.Split(strings.TrimRight(string(logs), "\n"), "\n")
		if len(lines) > 80 {
			lines = lines[len(lines)-80:]
		}
		msg = strings.Join(lines, "\n")
		if len(msg) > 2048 {
			msg = msg[len(msg)-2048:]
		}
	}
	return msg
}

// writeHosts rewrites the pod's /etc/hosts in place (containers see it
// through a bind mount), with the pod's own name first.
func (r *podRuntime) writeHosts(hosts string) {
	r.mu.Lock()
	ip, pod := r.ip, r.pod
	r.mu.Unlock()
	if ip == "" {
		return
	}
	own := hostnameOf(pod)
	if pod.Spec.Subdomain != "" {
		fq := fmt.Sprintf("%s.%s.%s.svc", own, pod.Spec.Subdomain, pod.Namespace)
		own = fmt.Sprintf("%s %s.cluster.local %s", fq, fq, own)
	}
	content := hosts + ip + " " + own + "\n"
	path := filepath.Join(r.dir, "hosts")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		log.Printf("nodeagent: pod %s hosts: %v", r.name(), err)
	}
}

func hostnameOf(pod *corev1.Pod) string {
	if pod.Spec.Hostname != "" {
		return pod.Spec.Hostname
	}
	return pod.Name
}

// statusWriter writes the pod's status whenever it changes, and every few
// seconds in case a write was lost.
func (r *podRuntime) statusWriter(ctx context.Context) {
	for {
		r.writeStatus(ctx)
		select {
		case <-ctx.Done():
			return
		case <-r.changed:
		case <-time.After(5 * time.Second):
		}
	}
}

func (r *podRuntime) computeStatus(pod *corev1.Pod) corev1.PodStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := corev1.PodStatus{
		Phase:     corev1.PodPending,
		HostIP:    gatewayIP,
		HostIPs:   []corev1.HostIP{{IP: gatewayIP}},
		StartTime: r.started,
		QOSClass:  pod.Status.QOSClass,
	}
	if r.ip != "" {
		s.PodIP = r.ip
		s.PodIPs = []corev1.PodIP{{IP: r.ip}}
	}
	toStatus := func(c corev1.Container) corev1.ContainerStatus {
		st := r.status[c.Name]
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image, RestartCount: st.restarts, Ready: st.ready}
		started := st.started && st.current != nil && st.current.Running != nil
		cs.Started = &started
		if st.current != nil {
			cs.State = *st.current
			if st.current.Running != nil {
				cs.ContainerID = fmt.Sprintf("nodeagent://%s-%s-%d", r.uid, c.Name, st.restarts)
			}
		} else {
			reason := "ContainerCreating"
			if st.init {
				reason = "PodInitializing"
			}
			cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}
		}
		if st.last != nil && st.last.Terminated != nil {
			cs.LastTerminationState = *st.last
		}
		return cs
	}
	allReady, anyRunning, allDone, anyFailed := true, false, true, false
	for _, c := range pod.Spec.InitContainers {
		s.InitContainerStatuses = append(s.InitContainerStatuses, toStatus(c))
	}
	for _, c := range pod.Spec.Containers {
		cs := toStatus(c)
		s.ContainerStatuses = append(s.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		if cs.State.Running != nil {
			anyRunning = true
		}
		if t := cs.State.Terminated; t != nil {
			if t.ExitCode != 0 {
				anyFailed = true
			}
		} else {
			allDone = false
		}
	}
	switch {
	case r.failure != "":
		s.Phase = corev1.PodFailed
		s.Reason = "NodeAgentError"
		s.Message = r.failure
	case r.initDone && allDone && len(pod.Spec.Containers) > 0 && pod.Spec.RestartPolicy != corev1.RestartPolicyAlways:
		s.Phase = corev1.PodSucceeded
		if anyFailed && pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
			s.Phase = corev1.PodFailed
		}
	case r.initDone && (anyRunning || allDone):
		s.Phase = corev1.PodRunning
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		st := corev1.ConditionFalse
		if ok {
			st = corev1.ConditionTrue
		}
		c := corev1.PodCondition{Type: t, Status: st, LastTransitionTime: metav1.Now()}
		for _, old := range pod.Status.Conditions {
			if old.Type == t && old.Status == st {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	ready := r.initDone && allReady && s.Phase == corev1.PodRunning
	s.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, r.ip != ""),
		cond(corev1.PodInitialized, r.initDone),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
		cond(corev1.PodScheduled, true),
	}
	return s
}

func (r *podRuntime) writeStatus(ctx context.Context) {
	for attempt := 0; attempt < 5; attempt++ {
		pod, err := r.a.client.CoreV1().Pods(r.pod.Namespace).Get(ctx, r.pod.Name, metav1.GetOptions{})
		if err != nil || pod.UID != r.uid {
			return
		}
		status := r.computeStatus(pod)
		r.mu.Lock()
		same := reflect.DeepEqual(status, r.lastWrite)
		r.mu.Unlock()
		if same && reflect.DeepEqual(pod.Status.ContainerStatuses, status.ContainerStatuses) && pod.Status.Phase == status.Phase {
			return
		}
		pod.Status = status
		_, err = r.a.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if err == nil {
			r.mu.Lock()
			r.lastWrite = status
			r.mu.Unlock()
			return
		}
		if !apierrors.IsConflict(err) {
			if !apierrors.IsNotFound(err) && ctx.Err() == nil {
				log.Printf("nodeagent: pod %s status: %v", r.name(), err)
			}
			return
		}
	}
}

func (r *podRuntime) dumpSpec(spec *containerSpec) (string, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	path := filepath.Join(r.dir, spec.Name+".json")
	return path, os.WriteFile(path, b, 0o600)
}

func agentBinary() string {
	self, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return self
}
