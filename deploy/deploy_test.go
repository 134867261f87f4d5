// Package deploy holds the manifests a user applies (kubectl apply -k
// deploy/); this test decodes them as the API server would and checks what
// the install relies on.
package deploy

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's Kustomization this directory uses.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

func readKustomization(t *testing.T) kustomization {
	t.Helper()
	data, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	return k
}

// decodeAll decodes every resource of the kustomization strictly (an unknown
// or misspelt field fails) with client-go's scheme.
func decodeAll(t *testing.T, k kustomization) []runtime.Object {
	t.Helper()
	strict := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
	var objs []runtime.Object
	for _, file := range k.Resources {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(data, []byte("\n---")) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, gvk, err := strict.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s document %d: %v", file, i, err)
			}
			t.Logf("%s: %s", file, gvk)
			objs = append(objs, obj)
		}
	}
	return objs
}

func TestManifestsDecode(t *testing.T) {
	k := readKustomization(t)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" || k.Namespace != "kube-system" {
		t.Errorf("kustomization header: %+v", k)
	}
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".yaml") && e.Name() != "kustomization.yaml" && !slices.Contains(k.Resources, e.Name()) {
			t.Errorf("%s is not in the kustomization's resources", e.Name())
		}
	}
	var (
		sa      *corev1.ServiceAccount
		role    *rbacv1.ClusterRole
		binding *rbacv1.ClusterRoleBinding
		ds      *appsv1.DaemonSet
	)
	for _, obj := range decodeAll(t, k) {
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			sa = o
		case *rbacv1.ClusterRole:
			role = o
		case *rbacv1.ClusterRoleBinding:
			binding = o
		case *appsv1.DaemonSet:
			ds = o
		default:
			t.Errorf("unexpected kind %T", obj)
		}
	}
	if sa == nil || role == nil || binding == nil || ds == nil {
		t.Fatalf("want a ServiceAccount, a ClusterRole, a ClusterRoleBinding and a DaemonSet")
	}
	checkBinding(t, binding, sa, role, k.Namespace)
	checkRole(t, role)
	checkDaemonSet(t, ds, sa, k)
}

func checkBinding(t *testing.T, b *rbacv1.ClusterRoleBinding, sa *corev1.ServiceAccount, role *rbacv1.ClusterRole, ns string) {
	t.Helper()
	if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.Name != role.Name {
		t.Errorf("binding refers to %+v, not ClusterRole %s", b.RoleRef, role.Name)
	}
	if len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" || b.Subjects[0].Name != sa.Name || b.Subjects[0].Namespace != ns {
		t.Errorf("binding subjects %+v, want ServiceAccount %s/%s", b.Subjects, ns, sa.Name)
	}
}

// The role grants exactly what issue 4 lists, and nothing else.
func checkRole(t *testing.T, role *rbacv1.ClusterRole) {
	t.Helper()
	granted := map[string]bool{}
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("unexpected rule %+v", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					granted[g+"/"+res+":"+v] = true
				}
			}
		}
	}
	var want []string
	for _, res := range []string{"/pods", "/namespaces", "networking.k8s.io/networkpolicies", "/nodes"} {
		for _, v := range []string{"get", "list", "watch"} {
			want = append(want, res+":"+v)
		}
	}
	want = append(want, "/events:create", "/pods/eviction:create")
	for _, w := range want {
		if !granted[w] {
			t.Errorf("role lacks %s", w)
		}
		delete(granted, w)
	}
	for extra := range granted {
		t.Errorf("role grants more than needed: %s", extra)
	}
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet, sa *corev1.ServiceAccount, k kustomization) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.ServiceAccountName != sa.Name {
		t.Errorf("hostNetwork %v, serviceAccountName %q", spec.HostNetwork, spec.ServiceAccountName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v: want one that tolerates every taint", spec.Tolerations)
	}
	if len(k.Images) != 1 || k.Images[0].NewName == "" || k.Images[0].NewTag == "" {
		t.Fatalf("kustomization images %+v: want one, with newName and newTag", k.Images)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounts := func(c corev1.Container) map[string]string {
		m := map[string]string{}
		for _, vm := range c.VolumeMounts {
			m[hostPaths[vm.Name]] = vm.MountPath
		}
		return m
	}
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("want one init container and one container")
	}
	install, agent := spec.InitContainers[0], spec.Containers[0]
	for _, c := range []corev1.Container{install, agent} {
		if c.Image != k.Images[0].Name {
			t.Errorf("%s: image %q is not the kustomization's image %q", c.Name, c.Image, k.Images[0].Name)
		}
		sc := c.SecurityContext
		if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s: want an unprivileged container dropping ALL capabilities, got %+v", c.Name, sc)
		}
	}
	if got := agent.SecurityContext.Capabilities.Add; !slices.Equal(got, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("agent capabilities %v, want NET_ADMIN and NET_RAW", got)
	}

	if len(install.Command) != 1 || !strings.HasSuffix(install.Command[0], "/install.sh") {
		t.Errorf("init container runs %v, want install.sh", install.Command)
	}
	im := mounts(install)
	if im["/opt/cni/bin"] == "" || im["/etc/cni/net.d"] == "" ||
		!slices.Contains(install.Args, "--cni-bin-dir="+im["/opt/cni/bin"]) || !slices.Contains(install.Args, "--cni-conf-dir="+im["/etc/cni/net.d"]) {
		t.Errorf("install.sh args %v do not point at the mounted CNI dirs %v", install.Args, im)
	}

	for _, want := range []string{"--node-name=$(NODE_NAME)", "--default-policy=deny", "--socket=/run/podwall/agent.sock", "--pod-cidrs-file=/var/lib/podwall/node-podcidrs.json"} {
		if !slices.Contains(agent.Args, want) {
			t.Errorf("agent args %v lack %s", agent.Args, want)
		}
	}
	nodeName := false
	for _, e := range agent.Env {
		nodeName = nodeName || (e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !nodeName {
		t.Error("NODE_NAME does not come from spec.nodeName")
	}
	am := mounts(agent)
	for _, host := range []string{"/run/podwall", "/var/lib/podwall", "/run/xtables.lock"} {
		if am[host] != host {
			t.Errorf("agent mounts %s at %q, want the same path", host, am[host])
		}
	}
	probe := agent.ReadinessProbe
	if probe == nil || probe.Exec == nil || !strings.HasSuffix(probe.Exec.Command[0], "/podwallctl") ||
		!slices.Contains(probe.Exec.Command, "status") || !slices.Contains(probe.Exec.Command, "/run/podwall/agent.sock") {
		t.Errorf("readiness probe %+v: want podwallctl --socket /run/podwall/agent.sock status", probe)
	}
}
