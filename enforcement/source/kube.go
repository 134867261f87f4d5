package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/cache"

	"github.com/podwall/podwall/enforcement/changes"
)

// DefaultResyncTimeout bounds one Kube.Resync when its context has no
// deadline: the agent's loop waits for it, and an unreachable API server
// must not stall attachments for longer than that.
const DefaultResyncTimeout = 5 * time.Second

// Kube is a Source reading a Kubernetes API server through client-go shared
// informers: Pods of every namespace (local ones get chains, every one can
// be a peer), Namespaces, NetworkPolicies, and this node's Node object (its
// spec.podCIDRs, for the IPAM). Objects are stripped to what the compiler
// needs as they enter the caches, so that a snapshot stays cheap at
// thousands of pods and policies.
type Kube struct {
	client        kubernetes.Interface
	meta          metadata.Interface
	node          string
	log           *slog.Logger
	resyncTimeout time.Duration

	factory     informers.SharedInformerFactory
	nodeFactory informers.SharedInformerFactory
	pods        cache.SharedIndexInformer
	namespaces  cache.SharedIndexInformer
	policies    cache.SharedIndexInformer
	nodes       cache.SharedIndexInformer

	changes     chan struct{}
	nodeChanges chan struct{}

	mu sync.Mutex
	// snap is the last snapshot built; dirty says the caches or the
	// overlay changed since. pending names the objects that changed since
	// the last Snapshot: unknown until the first one after the caches
	// synced, and after a watch failed (the informer relists).
	snap    Objects
	dirty   bool
	pending changes.Set
	// overlay holds pods fetched directly from the API server because the
	// plugin attached them before the informer saw them (watch lag).
	overlay map[string]*corev1.Pod
	health  apiHealth
}

// KubeOption configures a Kube.
type KubeOption func(*Kube)

// WithResyncTimeout bounds a Resync whose context has no deadline.
func WithResyncTimeout(d time.Duration) KubeOption { return func(k *Kube) { k.resyncTimeout = d } }

// NewKube returns a Kube for the node named node. client reads and watches
// the objects; meta lists their metadata only, for Resync.
func NewKube(client kubernetes.Interface, meta metadata.Interface, node string, log *slog.Logger, opts ...KubeOption) (*Kube, error) {
	if node == "" {
		return nil, errors.New("kubernetes source needs the node's name")
	}
	if client == nil || meta == nil {
		return nil, errors.New("kubernetes source needs a client")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Kube{
		client: client, meta: meta, node: node, log: log, resyncTimeout: DefaultResyncTimeout,
		changes: make(chan struct{}, 1), nodeChanges: make(chan struct{}, 1),
		dirty: true, overlay: map[string]*corev1.Pod{},
	}
	for _, o := range opts {
		o(k)
	}
	// No periodic resync: a resync replays the cache, it does not re-read
	// the API server, so it would only cost recompiles.
	k.factory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(stripForCompiler))
	k.nodeFactory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(stripForCompiler),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
		}))
	k.pods = k.factory.Core().V1().Pods().Informer()
	k.namespaces = k.factory.Core().V1().Namespaces().Informer()
	k.policies = k.factory.Networking().V1().NetworkPolicies().Informer()
	k.nodes = k.nodeFactory.Core().V1().Nodes().Informer()

	if _, err := k.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			k.forgetOverlay(obj)
			k.changed(obj, (*changes.Set).Pod)
		},
		UpdateFunc: func(oldObj, newObj any) {
			if samePodForCompiler(oldObj, newObj) {
				return
			}
			k.changed(newObj, (*changes.Set).Pod)
		},
		DeleteFunc: func(obj any) {
			k.forgetOverlay(obj)
			k.changed(obj, (*changes.Set).Pod)
		},
	}); err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	for _, r := range []struct {
		name   string
		inf    cache.SharedIndexInformer
		same   func(o, n any) bool
		record func(*changes.Set, string, string)
	}{
		{"namespace", k.namespaces, sameNamespaceForCompiler, func(ch *changes.Set, _, name string) { ch.Namespace(name) }},
		{"networkpolicy", k.policies, samePolicyForCompiler, (*changes.Set).Policy},
	} {
		if _, err := r.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { k.changed(obj, r.record) },
			UpdateFunc: func(o, n any) {
				if !r.same(o, n) {
					k.changed(n, r.record)
				}
			},
			DeleteFunc: func(obj any) { k.changed(obj, r.record) },
		}); err != nil {
			return nil, fmt.Errorf("%s informer: %w", r.name, err)
		}
	}
	for _, inf := range []cache.SharedIndexInformer{k.pods, k.namespaces, k.policies, k.nodes} {
		if err := inf.SetWatchErrorHandlerWithContext(k.watchFailed); err != nil {
			return nil, fmt.Errorf("informer watch error handler: %w", err)
		}
	}
	if _, err := k.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { signal(k.nodeChanges) },
		UpdateFunc: func(o, n any) {
			// The kubelet's status updates change nothing read here.
			if on, ok1 := o.(*corev1.Node); ok1 {
				if nn, ok2 := n.(*corev1.Node); ok2 && on.Spec.PodCIDR == nn.Spec.PodCIDR &&
					slices.Equal(on.Spec.PodCIDRs, nn.Spec.PodCIDRs) && on.UID == nn.UID {
					return
				}
			}
			signal(k.nodeChanges)
		},
		DeleteFunc: func(any) { signal(k.nodeChanges) },
	}); err != nil {
		return nil, fmt.Errorf("node informer: %w", err)
	}
	return k, nil
}

// NodeName is the name of the node the source serves.
func (k *Kube) NodeName() string { return k.node }

// Changes implements Source.
func (k *Kube) Changes() <-chan struct{} { return k.changes }

// NodeChanges receives a value after this node's Node object changed.
func (k *Kube) NodeChanges() <-chan struct{} { return k.nodeChanges }

// Run implements Source: it starts the informers and keeps them running
// until ctx ends. While the API server is unreachable the informers retry
// with backoff and the caches keep their last contents, so the agent keeps
// enforcing what it last saw.
func (k *Kube) Run(ctx context.Context) error {
	k.factory.Start(ctx.Done())
	k.nodeFactory.Start(ctx.Done())
	start := time.Now()
	synced := make(chan struct{})
	go func() {
		defer close(synced)
		cache.WaitForCacheSync(ctx.Done(), k.pods.HasSynced, k.namespaces.HasSynced, k.policies.HasSynced, k.nodes.HasSynced)
	}()
	select {
	case <-synced:
		if ctx.Err() == nil {
			k.log.Info("kubernetes caches synced", "took", time.Since(start).Round(time.Millisecond),
				"pods", len(k.pods.GetStore().ListKeys()), "namespaces", len(k.namespaces.GetStore().ListKeys()),
				"networkPolicies", len(k.policies.GetStore().ListKeys()))
			k.touch()
			signal(k.nodeChanges)
		}
	case <-ctx.Done():
	}
	k.checkHealth(ctx)
	k.factory.Shutdown()
	k.nodeFactory.Shutdown()
	return nil
}

func (k *Kube) synced() bool {
	return k.pods.HasSynced() && k.namespaces.HasSynced() && k.policies.HasSynced() && k.nodes.HasSynced()
}

// Snapshot implements Source. Until every cache has synced it returns
// ErrNotSynced. The snapshot is rebuilt only after a change.
func (k *Kube) Snapshot() (Objects, changes.Set, error) {
	if !k.synced() {
		return Objects{}, changes.Rebuild(), ErrNotSynced
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	// A change is recorded after the store holds it: taken here, under
	// the lock, it is in the lists below.
	ch := k.pending
	k.pending = changes.None()
	if !k.dirty {
		return k.snap, ch, k.healthError()
	}
	k.dirty = false
	nsObjs := k.namespaces.GetStore().List()
	polObjs := k.policies.GetStore().List()
	podObjs := k.pods.GetStore().List()
	objs := Objects{
		Namespaces: make([]corev1.Namespace, 0, len(nsObjs)),
		Policies:   make([]networkingv1.NetworkPolicy, 0, len(polObjs)),
		Pods:       make([]corev1.Pod, 0, len(podObjs)+len(k.overlay)),
	}
	for _, o := range nsObjs {
		if ns, ok := o.(*corev1.Namespace); ok {
			objs.Namespaces = append(objs.Namespaces, *ns)
		}
	}
	for _, o := range polObjs {
		if p, ok := o.(*networkingv1.NetworkPolicy); ok {
			objs.Policies = append(objs.Policies, *p)
		}
	}
	for _, o := range podObjs {
		if p, ok := o.(*corev1.Pod); ok {
			objs.Pods = append(objs.Pods, *p)
		}
	}
	k.pruneOverlay(&ch)
	for _, p := range k.overlay {
		objs.Pods = append(objs.Pods, *p)
	}
	k.snap = objs
	return objs, ch, k.healthError()
}

// Node returns this node's Node object as last seen, or nil.
func (k *Kube) Node() *corev1.Node {
	obj, ok, err := k.nodes.GetStore().GetByKey(k.node)
	if err != nil || !ok {
		return nil
	}
	n, _ := obj.(*corev1.Node)
	return n
}

// NodeSynced reports whether the Node cache has synced.
func (k *Kube) NodeSynced() bool { return k.nodes.HasSynced() }

// changed records that obj (an object or a tombstone) changed, and
// marks the snapshot stale.
func (k *Kube) changed(obj any, record func(ch *changes.Set, namespace, name string)) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	ns, name, splitErr := cache.SplitMetaNamespaceKey(key)
	k.mu.Lock()
	if err != nil || splitErr != nil {
		k.pending.MarkUnknown()
	} else {
		record(&k.pending, ns, name)
	}
	k.mu.Unlock()
	k.touch()
}

// touch marks the snapshot stale. Changes is signalled only once the
// caches have synced (Run signals then): before that the agent could do
// nothing with it.
func (k *Kube) touch() {
	k.mu.Lock()
	k.dirty = true
	k.mu.Unlock()
	if k.synced() {
		signal(k.changes)
	}
}

// signal sends on a channel buffered by one without blocking: a burst of
// changes is one notification.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
