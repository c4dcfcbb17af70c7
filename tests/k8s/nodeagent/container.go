package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// containerSpec is what the second stage (`nodeagent container`, run inside
// the pod's network namespace) needs to build the root and exec.
type containerSpec struct {
	Name           string
	Root           string
	Hostname       string
	Hosts          string
	TerminationLog string
	TerminationAt  string
	Log            string
	Binaries       []string
	Mounts         []mount
	Argv           []string
	Env            []string
	Workdir        string
	UID            *int64
	GID            *int64
	ReadOnlyRoot   bool
}

type mount struct {
	Source, Target string
	ReadOnly       bool
}

const defaultPath = "/app:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imageOf returns the binaries an image maps to (the first is its
// entrypoint).
func (a *agent) imageOf(image string) ([]string, error) {
	repo := image
	if i := strings.Index(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	bins, ok := a.cfg.images[repo]
	if !ok {
		return nil, fmt.Errorf("image %s: no binary for %s (the agent's --image flags)", image, repo)
	}
	return bins, nil
}

func (r *podRuntime) start(ctx context.Context, pod *corev1.Pod, c corev1.Container, volumes map[string]string) (*os.Process, *containerSpec, error) {
	bins, err := r.a.imageOf(c.Image)
	if err != nil {
		return nil, nil, err
	}
	env, err := r.env(ctx, pod, c)
	if err != nil {
		return nil, nil, err
	}
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	var argv []string
	if len(c.Command) > 0 {
		argv = append(argv, c.Command...)
	} else {
		argv = append(argv, "/app/"+filepath.Base(bins[0]))
	}
	argv = append(argv, c.Args...)
	for i := range argv {
		argv[i] = expand(argv[i], vars)
	}
	// A command naming an image binary by another path runs it from /app.
	for _, b := range bins {
		if filepath.Base(argv[0]) == filepath.Base(b) {
			argv[0] = "/app/" + filepath.Base(b)
		}
	}
	cdir := filepath.Join(r.dir, c.Name)
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		return nil, nil, err
	}
	termPath := c.TerminationMessagePath
	if termPath == "" {
		termPath = "/dev/termination-log"
	}
	spec := &containerSpec{
		Name:           c.Name,
		Root:           filepath.Join(cdir, "root"),
		Hostname:       hostnameOf(pod),
		Hosts:          filepath.Join(r.dir, "hosts"),
		TerminationLog: filepath.Join(cdir, "termination-log"),
		TerminationAt:  termPath,
		Log:            filepath.Join(r.dir, c.Name+".log"),
		Binaries:       bins,
		Argv:           argv,
		Env:            env,
		Workdir:        c.WorkingDir,
	}
	if err := os.WriteFile(spec.TerminationLog, nil, 0o666); err != nil {
		return nil, nil, err
	}
	_ = os.Chmod(spec.TerminationLog, 0o666)
	sc := pod.Spec.SecurityContext
	if sc != nil {
		spec.UID, spec.GID = sc.RunAsUser, sc.RunAsGroup
	}
	if c.SecurityContext != nil {
		if c.SecurityContext.RunAsUser != nil {
			spec.UID = c.SecurityContext.RunAsUser
		}
		if c.SecurityContext.RunAsGroup != nil {
			spec.GID = c.SecurityContext.RunAsGroup
		}
		spec.ReadOnlyRoot = c.SecurityContext.ReadOnlyRootFilesystem != nil && *c.SecurityContext.ReadOnlyRootFilesystem
	}
	for _, m := range c.VolumeMounts {
		src, ok := volumes[m.Name]
		if !ok {
			return nil, nil, fmt.Errorf("volume mount %s: no volume of that name", m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, m.SubPath)
			if err := os.MkdirAll(src, 0o777); err != nil {
				return nil, nil, err
			}
		}
		spec.Mounts = append(spec.Mounts, mount{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	specPath, err := r.dumpSpec(spec)
	if err != nil {
		return nil, nil, err
	}
	logFile, err := os.OpenFile(spec.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, nil, err
	}
	defer logFile.Close()
	r.mu.Lock()
	netns := r.netns
	r.mu.Unlock()
	cmd := exec.Command("ip", "netns", "exec", netns, "unshare", "--uts", agentBinary(), "container", specPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Containers die with the agent (set again after setuid, which
	// clears it).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	return cmd.Process, spec, nil
}

var varRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// expand replaces $(VAR) with its value, as the kubelet does; $$ is a
// literal $, and unknown references stay as written.
func expand(s string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		name := m[2 : len(m)-1]
		if v, ok := vars[name]; ok {
			return v
		}
		return m
	})
}

// env resolves a container's environment: the service variables of the
// `kubernetes` Service, envFrom, then env in order ($(VAR) expanded).
func (r *podRuntime) env(ctx context.Context, pod *corev1.Pod, c corev1.Container) ([]string, error) {
	r.mu.Lock()
	podIP := r.ip
	r.mu.Unlock()
	var order []string
	vars := map[string]string{}
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", defaultPath)
	set("HOSTNAME", hostnameOf(pod))
	set("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	set("KUBERNETES_SERVICE_PORT", "443")
	set("KUBERNETES_SERVICE_PORT_HTTPS", "443")
	set("KUBERNETES_PORT", "tcp://10.0.0.1:443")
	core := r.a.client.CoreV1()
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %s: %w", from.ConfigMapRef.Name, err)
			}
			for k, v := range cm.Data {
				set(from.Prefix+k, v)
			}
		case from.SecretRef != nil:
			s, err := core.Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && from.SecretRef.Optional != nil && *from.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %s: %w", from.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				set(from.Prefix+k, string(v))
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, vars))
			continue
		}
		vf := e.ValueFrom
		switch {
		case vf.FieldRef != nil:
			v, err := fieldValue(pod, vf.FieldRef.FieldPath, podIP)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			set(e.Name, v)
		case vf.ConfigMapKeyRef != nil:
			ref := vf.ConfigMapKeyRef
			cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			v, ok := "", false
			if err == nil {
				v, ok = cm.Data[ref.Key]
			} else if !apierrors.IsNotFound(err) {
				return nil, err
			}
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: configMap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			set(e.Name, v)
		case vf.SecretKeyRef != nil:
			ref := vf.SecretKeyRef
			s, err := core.Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			var v []byte
			ok := false
			if err == nil {
				v, ok = s.Data[ref.Key]
			} else if !apierrors.IsNotFound(err) {
				return nil, err
			}
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			set(e.Name, string(v))
		default:
			return nil, fmt.Errorf("env %s: only fieldRef, configMapKeyRef and secretKeyRef are supported by the test node agent", e.Name)
		}
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vars[k])
	}
	return env, nil
}

var labelRef = regexp.MustCompile(`^metadata\.(labels|annotations)\['([^']+)'\]$`)

func fieldValue(pod *corev1.Pod, path, podIP string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return gatewayIP, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	}
	if m := labelRef.FindStringSubmatch(path); m != nil {
		if m[1] == "labels" {
			return pod.Labels[m[2]], nil
		}
		return pod.Annotations[m[2]], nil
	}
	return "", fmt.Errorf("fieldRef %s is not supported by the test node agent", path)
}

// prepareVolumes makes a host directory for each of the pod's volumes.
func (r *podRuntime) prepareVolumes(ctx context.Context, pod *corev1.Pod) (map[string]string, error) {
	core := r.a.client.CoreV1()
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		dir := filepath.Join(r.dir, "volumes", v.Name)
		switch {
		case v.PersistentVolumeClaim != nil:
			path, err := r.claimPath(ctx, pod.Namespace, v.PersistentVolumeClaim.ClaimName)
			if err != nil {
				return nil, err
			}
			out[v.Name] = path
			continue
		case v.HostPath != nil:
			out[v.Name] = v.HostPath.Path
			continue
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return nil, err
			}
			_ = os.Chmod(dir, 0o777)
		case v.ConfigMap != nil:
			cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			if err := writeItems(dir, stringsToBytes(cm.Data), v.ConfigMap.Items); err != nil {
				return nil, err
			}
		case v.Secret != nil:
			s, err := core.Secrets(pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			if err := writeItems(dir, s.Data, v.Secret.Items); err != nil {
				return nil, err
			}
		case v.Projected != nil:
			if err := r.projected(ctx, pod, dir, v.Projected); err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
		default:
			return nil, fmt.Errorf("volume %s: its source is not supported by the test node agent", v.Name)
		}
		out[v.Name] = dir
	}
	return out, nil
}

// claimPath waits for the claim to be bound and returns its volume's
// directory.
func (r *podRuntime) claimPath(ctx context.Context, ns, claim string) (string, error) {
	core := r.a.client.CoreV1()
	for {
		pvc, err := core.PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err == nil && pvc.Spec.VolumeName != "" && pvc.Status.Phase == corev1.ClaimBound {
			pv, err := core.PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
			if err != nil {
				return "", err
			}
			if pv.Spec.HostPath == nil {
				return "", fmt.Errorf("claim %s: volume %s is not a directory the agent can mount", claim, pv.Name)
			}
			return pv.Spec.HostPath.Path, nil
		}
		select {
		case <-r.stopping:
			return "", fmt.Errorf("claim %s: the pod is stopping", claim)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func stringsToBytes(m map[string]string) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out
}

func writeItems(dir string, data map[string][]byte, items []corev1.KeyToPath) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(items) == 0 {
		for k, v := range data {
			if err := os.WriteFile(filepath.Join(dir, k), v, 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("no key %s", it.Key)
		}
		path := filepath.Join(dir, it.Path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, v, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// projected writes a projected volume: service-account tokens (a
// TokenRequest bound to the pod), configMap and secret items, and
// downward-API fields.
func (r *podRuntime) projected(ctx context.Context, pod *corev1.Pod, dir string, p *corev1.ProjectedVolumeSource) error {
	core := r.a.client.CoreV1()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, src := range p.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			t := src.ServiceAccountToken
			req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
				ExpirationSeconds: t.ExpirationSeconds,
				BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			}}
			if t.Audience != "" {
				req.Spec.Audiences = []string{t.Audience}
			}
			sa := pod.Spec.ServiceAccountName
			if sa == "" {
				sa = "default"
			}
			tok, err := core.ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("token of %s: %w", sa, err)
			}
			if err := os.WriteFile(filepath.Join(dir, t.Path), []byte(tok.Status.Token), 0o644); err != nil {
				return err
			}
		case src.ConfigMap != nil:
			cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if err := writeItems(dir, stringsToBytes(cm.Data), src.ConfigMap.Items); err != nil {
				return err
			}
		case src.Secret != nil:
			s, err := core.Secrets(pod.Namespace).Get(ctx, src.Secret.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if err := writeItems(dir, s.Data, src.Secret.Items); err != nil {
				return err
			}
		case src.DownwardAPI != nil:
			for _, it := range src.DownwardAPI.Items {
				if it.FieldRef == nil {
					return fmt.Errorf("downwardAPI %s: only fieldRef is supported by the test node agent", it.Path)
				}
				v, err := fieldValue(pod, it.FieldRef.FieldPath, "")
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, it.Path), []byte(v), 0o644); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("a projected source is not supported by the test node agent")
		}
	}
	return nil
}

// probe runs the container's startup, readiness and liveness probes until
// ctx ends; a failed liveness probe restarts the container.
func (r *podRuntime) probe(ctx context.Context, c corev1.Container, st *containerState) {
	if c.StartupProbe != nil {
		// Stopped because the container exited is no failure: a restart
		// signal sent then would kill the next run as it starts.
		if !r.probeUntil(ctx, c, c.StartupProbe, true) && ctx.Err() == nil {
			select {
			case st.restart <- struct{}{}:
			default:
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
	}
	r.mu.Lock()
	st.started = true
	if c.ReadinessProbe == nil {
		st.ready = true
	}
	r.mu.Unlock()
	r.notify()
	if c.ReadinessProbe != nil {
		go r.readiness(ctx, c, st)
	}
	if c.LivenessProbe != nil {
		if !r.probeUntil(ctx, c, c.LivenessProbe, false) && ctx.Err() == nil {
			select {
			case st.restart <- struct{}{}:
			default:
			}
		}
	}
}

// probeUntil probes at the probe's period; untilSuccess: true once the
// probe succeeds, false after failureThreshold failures in a row. Otherwise
// (liveness) it returns false after failureThreshold failures in a row.
func (r *podRuntime) probeUntil(ctx context.Context, c corev1.Container, p *corev1.Probe, untilSuccess bool) bool {
	if !sleepCtx(ctx, time.Duration(p.InitialDelaySeconds)*time.Second) {
		return false
	}
	failures := int32(0)
	for {
		ok := r.check(c, p)
		if ok {
			failures = 0
			if untilSuccess {
				return true
			}
		} else {
			failures++
			if failures >= max(p.FailureThreshold, 1) {
				return false
			}
		}
		if !sleepCtx(ctx, time.Duration(max(p.PeriodSeconds, 1))*time.Second) {
			return false
		}
	}
}

func (r *podRuntime) readiness(ctx context.Context, c corev1.Container, st *containerState) {
	p := c.ReadinessProbe
	if !sleepCtx(ctx, time.Duration(p.InitialDelaySeconds)*time.Second) {
		return
	}
	successes, failures := int32(0), int32(0)
	for {
		if r.check(c, p) {
			successes++
			failures = 0
			if successes >= max(p.SuccessThreshold, 1) {
				r.setReady(st, true)
			}
		} else {
			failures++
			successes = 0
			if failures >= max(p.FailureThreshold, 1) {
				r.setReady(st, false)
			}
		}
		if !sleepCtx(ctx, time.Duration(max(p.PeriodSeconds, 1))*time.Second) {
			return
		}
	}
}

func (r *podRuntime) setReady(st *containerState, ready bool) {
	r.mu.Lock()
	changed := st.ready != ready
	st.ready = ready
	r.mu.Unlock()
	if changed {
		r.notify()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func (r *podRuntime) check(c corev1.Container, p *corev1.Probe) bool {
	r.mu.Lock()
	ip := r.ip
	r.mu.Unlock()
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	switch {
	case p.HTTPGet != nil:
		port, err := portOf(c, p.HTTPGet.Port)
		if err != nil {
			return false
		}
		addr := net.JoinHostPort(ip, strconv.Itoa(port))
		client := &http.Client{Timeout: timeout, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return r.a.net.dial(addr, timeout)
			},
			DisableKeepAlives: true,
		}}
		scheme := "http"
		if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			return false
		}
		resp, err := client.Get(fmt.Sprintf("%s://%s%s", scheme, addr, p.HTTPGet.Path))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	case p.TCPSocket != nil:
		port, err := portOf(c, p.TCPSocket.Port)
		if err != nil {
			return false
		}
		conn, err := r.a.net.dial(net.JoinHostPort(ip, strconv.Itoa(port)), timeout)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	return false
}

func portOf(c corev1.Container, port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("no port named %s", port.StrVal)
}

// containerMain is the second stage, run as
// `ip netns exec NS unshare --uts nodeagent container SPEC`: in the pod's
// network namespace and a mount namespace of its own, it builds the
// container's root on a tmpfs, chroots into it and execs the container.
func containerMain(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: nodeagent container SPEC.json")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var s containerSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if err := syscall.Sethostname([]byte(s.Hostname)); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	if err := buildRoot(&s); err != nil {
		return err
	}
	if err := syscall.Chroot(s.Root); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	wd := s.Workdir
	if wd == "" {
		wd = "/"
	}
	if err := os.Chdir(wd); err != nil {
		return fmt.Errorf("workdir %s: %w", wd, err)
	}
	if s.GID != nil {
		if err := syscall.Setgroups(nil); err != nil {
			return err
		}
		if err := syscall.Setgid(int(*s.GID)); err != nil {
			return fmt.Errorf("setgid: %w", err)
		}
	}
	if s.UID != nil {
		if err := syscall.Setuid(int(*s.UID)); err != nil {
			return fmt.Errorf("setuid: %w", err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("parent-death signal: %w", err)
	}
	if os.Getppid() == 1 {
		return fmt.Errorf("the node agent is gone")
	}
	path := s.Argv[0]
	if !strings.Contains(path, "/") {
		for _, dir := range strings.Split(defaultPath, ":") {
			if _, err := os.Stat(filepath.Join(dir, path)); err == nil {
				path = filepath.Join(dir, path)
				break
			}
		}
	}
	return syscall.Exec(path, s.Argv, s.Env)
}

func buildRoot(s *containerSpec) error {
	root := s.Root
	must := func(err error, what string) error {
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := must(syscall.Mount("tmpfs", root, "tmpfs", 0, "mode=755"), "tmpfs root"); err != nil {
		return err
	}
	bind := func(src, dst string, ro, dir bool) error {
		if dir {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		} else {
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(dst, os.O_CREATE, 0o644)
			if err != nil {
				return err
			}
			f.Close()
		}
		if err := syscall.Mount(src, dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", src, dst, err)
		}
		if ro {
			if err := syscall.Mount("", dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_REC, ""); err != nil {
				return fmt.Errorf("read-only %s: %w", dst, err)
			}
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		return err
	}
	// The host's system directories, read-only (symlinks such as /bin ->
	// usr/bin kept as symlinks).
	for _, d := range []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc/ssl", "etc/alternatives", "sys"} {
		host := "/" + d
		fi, err := os.Lstat(host)
		if err != nil {
			continue
		}
		dst := filepath.Join(root, d)
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(host)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
			continue
		}
		if err := bind(host, dst, true, true); err != nil {
			return err
		}
	}
	for _, f := range []string{"passwd", "group", "nsswitch.conf", "localtime"} {
		if b, err := os.ReadFile("/etc/" + f); err == nil {
			if err := os.WriteFile(filepath.Join(root, "etc", f), b, 0o644); err != nil {
				return err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte(s.Hostname+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "resolv.conf"), []byte("# no cluster DNS: names are in /etc/hosts\n"), 0o644); err != nil {
		return err
	}
	if err := bind(s.Hosts, filepath.Join(root, "etc", "hosts"), true, false); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o755); err != nil {
		return err
	}
	if err := must(syscall.Mount("proc", filepath.Join(root, "proc"), "proc", 0, ""), "proc"); err != nil {
		return err
	}
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return err
	}
	if err := must(syscall.Mount("tmpfs", dev, "tmpfs", 0, "mode=755"), "tmpfs /dev"); err != nil {
		return err
	}
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if err := bind("/dev/"+d, filepath.Join(dev, d), false, false); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "dev/shm", "run", "var/tmp"} {
		p := filepath.Join(root, d)
		if err := os.MkdirAll(p, 0o1777); err != nil {
			return err
		}
		if err := must(syscall.Mount("tmpfs", p, "tmpfs", 0, "mode=1777"), "tmpfs "+d); err != nil {
			return err
		}
	}
	for _, b := range s.Binaries {
		if err := bind(b, filepath.Join(root, "app", filepath.Base(b)), true, false); err != nil {
			return err
		}
	}
	if err := bind(s.TerminationLog, filepath.Join(root, s.TerminationAt), false, false); err != nil {
		return err
	}
	for _, m := range s.Mounts {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("volume %s: %w", m.Source, err)
		}
		if err := bind(m.Source, filepath.Join(root, m.Target), m.ReadOnly, fi.IsDir()); err != nil {
			return err
		}
	}
	if s.ReadOnlyRoot {
		if err := must(syscall.Mount("", root, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""), "read-only root"); err != nil {
			return err
		}
	}
	return nil
}
