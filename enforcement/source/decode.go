package source

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/podwall/podwall/enforcement/changes"
)

// header is what every manifest must have before its kind is known.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// decoded is one outcome of a file's documents, in document order: a
// problem, or an object to claim. Claims are resolved across files only
// when the files are merged (see merger), so that what a file decodes to
// depends on its bytes alone and can be kept while the file is unchanged.
type decoded struct {
	problem *Problem
	// claim names the object (kind, namespace, name, file, document);
	// set together with exactly one of ns, pod and policy.
	claim  *Problem
	ns     *corev1.Namespace
	pod    *corev1.Pod
	policy *networkingv1.NetworkPolicy
}

// decoder decodes the documents of one file.
type decoder struct {
	out []decoded
}

// decodeFile decodes every document of one file.
func decodeFile(file string, data []byte) []decoded {
	d := &decoder{}
	docs, err := splitDocuments(file, data)
	for i, doc := range docs {
		d.addDocument(file, i, doc)
	}
	if err != nil {
		d.problem(Problem{File: file, Index: len(docs), Err: fmt.Errorf("rest of the file skipped: %w", err)})
	}
	return d.out
}

// merger assembles the files of one read, in file order: the first
// definition of an object counts, later ones are reported.
type merger struct {
	objs Objects
	// origins says where the definition that counts of each object comes
	// from.
	origins map[objectID]origin
}

// objectID names an object: its kind, namespace and name.
type objectID struct{ kind, namespace, name string }

// origin is one document of one content of a file: the same origin
// decodes to the same object, so an object whose origin did not change
// did not change.
type origin struct {
	file string
	sum  [sha256.Size]byte
	item int // the position among what the file decoded to
}

// newMerger sizes the merge for n objects, which saves growing large
// slices of large structs.
func newMerger(n objectCount) *merger {
	return &merger{
		origins: make(map[objectID]origin, n.namespaces+n.pods+n.policies),
		objs: Objects{
			Namespaces: make([]corev1.Namespace, 0, n.namespaces),
			Pods:       make([]corev1.Pod, 0, n.pods),
			Policies:   make([]networkingv1.NetworkPolicy, 0, n.policies),
		},
	}
}

type objectCount struct{ namespaces, pods, policies int }

func countObjects(files map[string]cachedFile) objectCount {
	var n objectCount
	for _, f := range files {
		for _, it := range f.items {
			switch {
			case it.ns != nil:
				n.namespaces++
			case it.pod != nil:
				n.pods++
			case it.policy != nil:
				n.policies++
			}
		}
	}
	return n
}

func (m *merger) problem(p Problem) { m.objs.Problems = append(m.objs.Problems, p) }

// add merges what a file whose bytes hash to sum decoded to.
func (m *merger) add(file string, sum [sha256.Size]byte, items []decoded) {
	for i, it := range items {
		if it.problem != nil {
			m.problem(*it.problem)
			continue
		}
		if !m.claim(*it.claim, origin{file: file, sum: sum, item: i}) {
			continue
		}
		switch {
		case it.ns != nil:
			m.objs.Namespaces = append(m.objs.Namespaces, *it.ns)
		case it.pod != nil:
			m.objs.Pods = append(m.objs.Pods, *it.pod)
		case it.policy != nil:
			m.objs.Policies = append(m.objs.Policies, *it.policy)
		}
	}
}

// claim records kind/namespace/name as defined at o, reporting a
// duplicate (the first definition, in file order, counts).
func (m *merger) claim(p Problem, o origin) bool {
	id := objectID{p.Kind, p.Namespace, p.Name}
	if first, dup := m.origins[id]; dup {
		p.Err = fmt.Errorf("already defined in %s; this one is ignored", first.file)
		m.problem(p)
		return false
	}
	m.origins[id] = o
	return true
}

// recordChanges records in ch the objects that differ between two
// merges: an object from the same origin is the same; one from another
// origin (its file changed, or another file's definition counts now) is
// compared.
func recordChanges(before, after map[objectID]origin, beforeFiles, afterFiles map[string]cachedFile, ch *changes.Set) {
	record := func(id objectID) {
		switch id.kind {
		case "Namespace":
			ch.Namespace(id.name)
		case "Pod":
			ch.Pod(id.namespace, id.name)
		case "NetworkPolicy":
			ch.Policy(id.namespace, id.name)
		}
	}
	for id, o := range after {
		was, ok := before[id]
		if !ok || (was != o && !sameObject(beforeFiles[was.file].items[was.item], afterFiles[o.file].items[o.item])) {
			record(id)
		}
	}
	for id := range before {
		if _, ok := after[id]; !ok {
			record(id)
		}
	}
}

func sameObject(a, b decoded) bool {
	switch {
	case a.ns != nil && b.ns != nil:
		return equality.Semantic.DeepEqual(a.ns, b.ns)
	case a.pod != nil && b.pod != nil:
		return equality.Semantic.DeepEqual(a.pod, b.pod)
	case a.policy != nil && b.policy != nil:
		return equality.Semantic.DeepEqual(a.policy, b.policy)
	}
	return false
}

// splitDocuments returns the documents of a file as JSON.
func splitDocuments(name string, data []byte) ([][]byte, error) {
	if strings.EqualFold(filepath.Ext(name), ".json") {
		var docs [][]byte
		dec := json.NewDecoder(bytes.NewReader(data))
		for {
			var raw json.RawMessage
			err := dec.Decode(&raw)
			if errors.Is(err, io.EOF) {
				return docs, nil
			}
			if err != nil {
				return docs, fmt.Errorf("invalid JSON after %d documents: %w", len(docs), err)
			}
			docs = append(docs, raw)
		}
	}
	var docs [][]byte
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return docs, fmt.Errorf("reading YAML document %d: %w", len(docs), err)
		}
		docs = append(docs, doc)
	}
}

func (d *decoder) problem(p Problem) { d.out = append(d.out, decoded{problem: &p}) }

func (d *decoder) object(claim Problem, it decoded) {
	it.claim = &claim
	d.out = append(d.out, it)
}

// decodeStrict decodes a document already turned into JSON, refusing
// unknown fields and trailing data, as kubectl's strict decoding does. Not
// sigs.k8s.io/yaml's UnmarshalStrict: it would parse the JSON as YAML once
// more, which is most of the time of an agent's first read.
func decodeStrict(js []byte, obj any) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the object")
	}
	return nil
}

// addDocument decodes one YAML or JSON document.
func (d *decoder) addDocument(file string, index int, doc []byte) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		d.problem(Problem{File: file, Index: index, Err: fmt.Errorf("not valid YAML: %w", err)})
		return
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return // an empty document, e.g. only comments or a trailing ---
	}
	var h header
	if err := json.Unmarshal(js, &h); err != nil {
		d.problem(Problem{File: file, Index: index, Err: fmt.Errorf("not a Kubernetes object: %w", err)})
		return
	}
	p := Problem{File: file, Index: index, Kind: h.Kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name}
	want, known := apiVersions[h.Kind]
	switch {
	case h.Kind == "":
		p.Err = errors.New("kind is missing")
	case !known:
		p.Err = fmt.Errorf("kind %q is not one of Namespace, Pod, NetworkPolicy or List", h.Kind)
	case h.APIVersion != want:
		p.Err = fmt.Errorf("apiVersion %q, want %q", h.APIVersion, want)
	}
	if p.Err != nil {
		d.problem(p)
		return
	}
	switch h.Kind {
	case "List":
		d.addList(file, index, js)
	case "Namespace":
		d.addNamespace(p, js)
	case "Pod":
		d.addPod(p, js)
	case "NetworkPolicy":
		d.addPolicy(p, js)
	}
}

var apiVersions = map[string]string{
	"List":          "v1",
	"Namespace":     "v1",
	"Pod":           "v1",
	"NetworkPolicy": "networking.k8s.io/v1",
}

func (d *decoder) addList(file string, index int, js []byte) {
	var list struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(js, &list); err != nil {
		d.problem(Problem{File: file, Index: index, Kind: "List", Err: fmt.Errorf("items: %w", err)})
		return
	}
	for _, item := range list.Items {
		d.addDocument(file, index, item)
	}
}

func (d *decoder) addNamespace(p Problem, js []byte) {
	var ns corev1.Namespace
	if err := decodeStrict(js, &ns); err != nil {
		p.Err = fmt.Errorf("invalid Namespace: %w", err)
		d.problem(p)
		return
	}
	p.Namespace = ""
	if err := validateMeta(ns.ObjectMeta, false); err != nil {
		p.Err = err
		d.problem(p)
		return
	}
	d.object(p, decoded{ns: &ns})
}

func (d *decoder) addPod(p Problem, js []byte) {
	var pod corev1.Pod
	if err := decodeStrict(js, &pod); err != nil {
		p.Err = fmt.Errorf("invalid Pod: %w", err)
		d.problem(p)
		return
	}
	defaultNamespace(&pod.ObjectMeta)
	p.Namespace = pod.Namespace
	if err := validateMeta(pod.ObjectMeta, true); err != nil {
		p.Err = err
		d.problem(p)
		return
	}
	d.object(p, decoded{pod: &pod})
}

// addPolicy adds a NetworkPolicy. One that cannot even be decoded is not
// simply dropped: in kubernetes mode that would open the pods it was meant
// to isolate. It is replaced by a policy that isolates every pod of its
// namespace in both directions and allows nothing, which is also what the
// compiler does with a policy whose podSelector it cannot parse.
func (d *decoder) addPolicy(p Problem, js []byte) {
	var np networkingv1.NetworkPolicy
	err := decodeStrict(js, &np)
	if err == nil {
		defaultNamespace(&np.ObjectMeta)
		p.Namespace = np.Namespace
		if err := validateMeta(np.ObjectMeta, true); err != nil {
			p.Err = err
			d.problem(p)
			return
		}
		d.object(p, decoded{policy: &np})
		return
	}
	ns := p.Namespace
	if ns == "" {
		ns = corev1.NamespaceDefault
	}
	if len(validation.IsDNS1123Label(ns)) > 0 {
		p.Err = fmt.Errorf("invalid NetworkPolicy, skipped: %w", err)
		d.problem(p)
		return
	}
	name := p.Name
	if len(validation.IsDNS1123Subdomain(name)) > 0 {
		sum := sha256.Sum256([]byte(fmt.Sprintf("%s#%d", p.File, p.Index)))
		name = fmt.Sprintf("podwall-invalid-%x", sum[:6])
	}
	p.Namespace, p.Name = ns, name
	p.Err = fmt.Errorf("invalid NetworkPolicy, enforced as isolating every pod of namespace %s in both directions: %w", ns, err)
	d.problem(p)
	iso := isolateNamespace(ns, name)
	d.object(p, decoded{policy: &iso})
}

func isolateNamespace(namespace, name string) networkingv1.NetworkPolicy {
	return networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	}
}

func defaultNamespace(m *metav1.ObjectMeta) {
	if m.Namespace == "" {
		m.Namespace = corev1.NamespaceDefault
	}
}

// validateMeta checks names the way the API server would, so that a typo
// is reported instead of silently selecting nothing.
func validateMeta(m metav1.ObjectMeta, namespaced bool) error {
	if m.Name == "" {
		return errors.New("metadata.name is missing")
	}
	var errs []string
	if namespaced {
		errs = validation.IsDNS1123Subdomain(m.Name)
	} else {
		errs = validation.IsDNS1123Label(m.Name)
	}
	if len(errs) > 0 {
		return fmt.Errorf("metadata.name %q: %s", m.Name, strings.Join(errs, "; "))
	}
	if namespaced {
		if errs := validation.IsDNS1123Label(m.Namespace); len(errs) > 0 {
			return fmt.Errorf("metadata.namespace %q: %s", m.Namespace, strings.Join(errs, "; "))
		}
	}
	for k, v := range m.Labels {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("label key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return fmt.Errorf("label %s=%q: %s", k, v, strings.Join(errs, "; "))
		}
	}
	return nil
}
