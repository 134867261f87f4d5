// Package agent is podwall's node agent: it keeps the policy chains and
// sets of the pods attached on this node converged to what the policy
// source says. One goroutine (Run) owns all state and serialises every
// change: source updates, attachments reported by the plugin, sync requests
// and retries all end in one compile and one dataplane Apply.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/podwall/podwall/enforcement/agentapi"
	"github.com/podwall/podwall/enforcement/changes"
	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	"github.com/podwall/podwall/enforcement/source"
)

// Config is what an Agent needs.
type Config struct {
	Source    source.Source
	Dataplane Dataplane
	Mode      policy.Mode
	// Node is this node's name; empty when unknown (standalone mode).
	Node string
	Log  *slog.Logger

	// RetryMin and RetryMax bound the backoff after a failed apply.
	// Zero means 100ms and 10s.
	RetryMin, RetryMax time.Duration
	// KernelRefresh is how often the attachments are read back from the
	// kernel, to catch reports the agent missed. Zero means
	// DefaultKernelRefresh.
	KernelRefresh time.Duration
	// BaseCheck is how often the jumps into podwall's chains are checked
	// (and restored: without them no pod is enforced). Zero means
	// DefaultBaseCheck.
	BaseCheck time.Duration
	// ApplyTimeout bounds one Apply. Zero means 1 minute.
	ApplyTimeout time.Duration
}

// The defaults of Config.KernelRefresh and Config.BaseCheck.
const (
	DefaultKernelRefresh = 30 * time.Second
	DefaultBaseCheck     = 5 * time.Second
)

// ErrStopped is returned to requests the agent cannot answer because it is
// shutting down.
var ErrStopped = errors.New("agent is stopping")

// Agent enforces policy on one node.
type Agent struct {
	cfg  Config
	mode policy.Mode
	log  *slog.Logger

	// queue holds requests for the loop; wake tells it there are some.
	queueMu sync.Mutex
	queue   []*request
	stopped bool
	wake    chan struct{}

	// Loop state: touched only by Run.
	reg        *registry
	adopted    bool
	probed     bool
	generation uint64
	applied    map[string]uint64 // key -> seq of the attachment last applied
	// removing are the keys detached whose chains the next apply removes.
	removing map[string]bool
	lastGood lastApply
	// compileCache keeps what the last compilation derived; changed is
	// what changed since (the source's changes and the attachments'), and
	// input records the attachments of the last compilation's input.
	compileCache *policy.Cache
	changed      changes.Set
	input        inputBuilder

	statusMu sync.Mutex
	status   agentapi.Status
}

type lastApply struct {
	at    time.Time
	stats ruleset.Stats
}

type requestKind int

const (
	reqAttach requestKind = iota
	reqDetach
	reqSync
)

type request struct {
	kind requestKind
	att  *attachment
	key  string
	// err is set by the loop before the apply when the request itself
	// failed (a sync whose source could not be read).
	err  error
	done chan result
}

type result struct {
	status agentapi.Status
	err    error
}

// New returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	mode, err := policy.ParseMode(string(cfg.Mode))
	if err != nil {
		return nil, err
	}
	if cfg.Source == nil || cfg.Dataplane == nil {
		return nil, errors.New("agent needs a source and a dataplane")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 100 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(10*time.Second, cfg.RetryMin)
	}
	if cfg.KernelRefresh <= 0 {
		cfg.KernelRefresh = DefaultKernelRefresh
	}
	if cfg.BaseCheck <= 0 {
		cfg.BaseCheck = DefaultBaseCheck
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = time.Minute
	}
	a := &Agent{
		cfg:      cfg,
		mode:     mode,
		log:      cfg.Log,
		wake:     make(chan struct{}, 1),
		reg:      newRegistry(),
		applied:  map[string]uint64{},
		removing: map[string]bool{},

		compileCache: policy.NewCache(),
	}
	a.status = agentapi.Status{Mode: string(mode), Pods: []agentapi.PodStatus{}}
	return a, nil
}

// Attach registers an attachment and returns once an apply that includes
// it has completed. If ctx ends first the attachment stays registered and
// is programmed by a later apply.
func (a *Agent) Attach(ctx context.Context, att agentapi.Attachment) error {
	parsed, err := parseAttachment(att)
	if err != nil {
		return &RequestError{Err: fmt.Errorf("attachment: %w", err)}
	}
	// How long a pod's ADD waits for the agent.
	start := time.Now()
	_, err = a.submit(ctx, &request{kind: reqAttach, att: parsed})
	a.log.Debug("attach answered", "key", att.Key, "took", time.Since(start), "err", err)
	return err
}

// Detach forgets an attachment, and returns after the apply that removed
// its chains and what only it used.
func (a *Agent) Detach(ctx context.Context, key string) error {
	if err := policy.ValidateChainKey(key); err != nil {
		return &RequestError{Err: err}
	}
	_, err := a.submit(ctx, &request{kind: reqDetach, key: key})
	return err
}

// Sync re-reads the source and returns the status after the apply that
// follows.
func (a *Agent) Sync(ctx context.Context) (agentapi.Status, error) {
	// The source is read here, not in the loop: a slow or unreachable
	// origin must not hold up attachments and other syncs.
	r := &request{kind: reqSync}
	if err := a.cfg.Source.Resync(ctx); err != nil {
		r.err = fmt.Errorf("reading policy source: %w", err)
	}
	return a.submit(ctx, r)
}

// Status returns what the agent enforces.
func (a *Agent) Status() agentapi.Status {
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	return a.status
}

// Ready reports whether the first apply succeeded.
func (a *Agent) Ready() bool { return a.Status().Ready }

// RequestError is a request the agent refused as invalid.
type RequestError struct{ Err error }

func (e *RequestError) Error() string { return e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }

func (a *Agent) submit(ctx context.Context, r *request) (agentapi.Status, error) {
	r.done = make(chan result, 1)
	a.queueMu.Lock()
	if a.stopped {
		a.queueMu.Unlock()
		return agentapi.Status{}, ErrStopped
	}
	a.queue = append(a.queue, r)
	a.queueMu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	select {
	case res := <-r.done:
		return res.status, res.err
	case <-ctx.Done():
		return agentapi.Status{}, fmt.Errorf("waiting for the apply: %w", ctx.Err())
	}
}

func (a *Agent) takeRequests() []*request {
	a.queueMu.Lock()
	defer a.queueMu.Unlock()
	q := a.queue
	a.queue = nil
	return q
}

// Run is the agent's loop. It returns when ctx ends; the kernel state stays
// as it is, so pods remain enforced while no agent runs.
func (a *Agent) Run(ctx context.Context) error {
	var (
		waiters      []*request
		dirty        = true // nothing applied yet
		urgent       = true
		backoff      time.Duration
		retry        = time.NewTimer(time.Hour)
		retryPending bool
	)
	retry.Stop()
	refresh := time.NewTicker(a.cfg.KernelRefresh)
	defer refresh.Stop()
	baseCheck := time.NewTicker(a.cfg.BaseCheck)
	defer baseCheck.Stop()
	defer a.stop()

	for {
		for _, r := range a.takeRequests() {
			a.handle(ctx, r)
			waiters = append(waiters, r)
			dirty, urgent = true, true
		}
		if ctx.Err() != nil {
			for _, w := range waiters {
				w.done <- result{status: a.Status(), err: ErrStopped}
			}
			return nil
		}
		if dirty && (urgent || !retryPending) {
			err := a.reconcile(ctx)
			for _, w := range waiters {
				werr := w.err
				if werr == nil {
					werr = err
				}
				w.done <- result{status: a.Status(), err: werr}
			}
			waiters, urgent = nil, false
			if err != nil {
				backoff = min(max(2*backoff, a.cfg.RetryMin), a.cfg.RetryMax)
				a.log.Error("enforcing policy failed; retrying", "err", err, "retryIn", backoff)
				retry.Reset(backoff)
				retryPending = true
			} else {
				dirty, backoff = false, 0
				if retryPending {
					retry.Stop()
					retryPending = false
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-a.wake:
		case <-a.cfg.Source.Changes():
			dirty = true
		case <-retry.C:
			retryPending = false
		case <-baseCheck.C:
			if a.adopted {
				a.ensureBase(ctx)
			}
		case <-refresh.C:
			if a.adopted {
				if err := a.refreshFromKernel(ctx); err != nil {
					a.log.Warn("reading attachments back from the kernel", "err", err)
				} else if a.reg.changedSinceApply(a.applied) {
					dirty = true
				}
			}
		}
	}
}

// stop refuses new requests and fails the queued ones.
func (a *Agent) stop() {
	a.queueMu.Lock()
	a.stopped = true
	q := a.queue
	a.queue = nil
	a.queueMu.Unlock()
	for _, r := range q {
		r.done <- result{status: a.Status(), err: ErrStopped}
	}
}

// handle applies a request to the registry (or the source) before the
// apply that answers it.
func (a *Agent) handle(ctx context.Context, r *request) {
	switch r.kind {
	case reqAttach:
		a.reg.put(r.att)
		delete(a.removing, r.att.api.Key)
		a.log.Info("pod attached", "pod", r.att.ref(), "key", r.att.api.Key, "ips", r.att.api.IPs)
		a.fetchPod(ctx, r.att)
	case reqDetach:
		if _, ok := a.reg.byKey[r.key]; ok {
			a.log.Info("pod detached", "key", r.key)
		}
		a.reg.remove(r.key)
		a.removing[r.key] = true
	case reqSync:
		// Sync read the source before queueing: the apply that follows
		// sees everything it found.
	}
}

// ensureBase checks the jumps into podwall's chains, which nothing else
// watches between ADDs: pods are not enforced while one is missing.
func (a *Agent) ensureBase(ctx context.Context) {
	if len(a.reg.byKey) == 0 {
		return // no pods, so podwall rightly has no chains
	}
	restored, err := a.cfg.Dataplane.EnsureBase(ctx)
	switch {
	case err != nil:
		a.log.Error("checking the jumps into podwall's chains failed; pods may not be enforced", "err", err)
	case restored != "":
		a.log.Error("jumps into podwall's chains were missing, so pods were not enforced; restored", "restored", restored)
	}
}

func (a *Agent) refreshFromKernel(ctx context.Context) error {
	pods, err := a.cfg.Dataplane.Pods(ctx)
	if err != nil {
		return err
	}
	if a.reg.syncWith(pods, a.applied) {
		a.log.Info("attachments re-read from the kernel differ from the reported ones; converging", "pods", len(pods))
	}
	return nil
}

// reconcile compiles the current input and applies it. Before the first
// apply it probes the node and adopts the attachments already in the
// kernel, so that a restarted agent changes only what differs.
func (a *Agent) reconcile(ctx context.Context) error {
	// Let an apply that has started finish even while stopping: an
	// interrupted restore is worse than a late exit.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ApplyTimeout)
	defer cancel()
	if !a.probed {
		if err := a.cfg.Dataplane.Probe(actx); err != nil {
			return a.failed(fmt.Errorf("this node cannot be enforced: %w", err), nil)
		}
		a.probed = true
	}
	if !a.adopted {
		pods, err := a.cfg.Dataplane.Pods(actx)
		if err != nil {
			return a.failed(fmt.Errorf("reading the attachments in the kernel: %w", err), nil)
		}
		// Attachments reported before adoption are in the kernel too.
		for _, p := range pods {
			if _, ok := a.reg.byKey[p.Key]; ok {
				continue
			}
			if err := dataplane.ValidatePod(p); err != nil {
				a.log.Warn("attachment in the kernel not adopted", "key", p.Key, "err", err)
				continue
			}
			a.reg.put(fromKernel(p))
		}
		a.adopted = true
		a.log.Info("adopted the attachments in the kernel", "pods", len(pods))
	}

	// The snapshot below covers every change signalled so far.
	select {
	case <-a.cfg.Source.Changes():
	default:
	}
	inputStart := time.Now()
	objs, srcChanges, srcErr := a.cfg.Source.Snapshot()
	a.changed.Merge(srcChanges)
	if errors.Is(srcErr, source.ErrNotSynced) {
		return a.failed(srcErr, nil)
	}
	in, problems := a.input.build(objs, a.reg, a.mode, a.cfg.Node, &a.changed)
	for _, p := range objs.Problems {
		problems = append(problems, p.Error())
	}
	if srcErr != nil {
		problems = append(problems, fmt.Sprintf("policy source: %v (enforcing its last good contents)", srcErr))
	}
	compileStart := time.Now()
	inputTook := compileStart.Sub(inputStart)
	// The cache has consumed the changes, even when it fails: it then
	// derives everything at its next compilation.
	desired, err := a.compileCache.Compile(in, a.changed)
	a.changed = changes.None()
	compileTook := time.Since(compileStart)
	if err != nil {
		return a.failed(fmt.Errorf("compiling policy: %w", err), problems)
	}
	for _, p := range desired.Problems {
		problems = append(problems, p.Error())
	}
	start := time.Now()
	removing := slices.Sorted(maps.Keys(a.removing))
	stats, err := a.cfg.Dataplane.Apply(actx, dataplane.Target{Pods: a.reg.pods(), Remove: removing, Policy: desired})
	if err != nil {
		return a.failed(fmt.Errorf("applying policy: %w", err), problems)
	}
	for _, key := range removing {
		delete(a.removing, key)
	}
	a.generation++
	a.applied = make(map[string]uint64, len(desired.Pods))
	for _, lp := range desired.Pods {
		if att := a.reg.byKey[lp.Key]; att != nil {
			a.applied[lp.Key] = att.seq
		}
	}
	a.lastGood = lastApply{at: time.Now(), stats: desired.Stats()}
	a.log.Debug("policy applied", "generation", a.generation, "pods", len(desired.Pods), "policies", len(objs.Policies),
		"took", time.Since(start), "compileTook", compileTook, "chainsWritten", stats.ChainsWritten, "setsCreated", stats.SetsCreated,
		"setsDestroyed", stats.SetsDestroyed, "unchanged", stats.Unchanged, "inputTook", inputTook)
	a.publish(len(objs.Policies), problems, "")
	return nil
}

func (a *Agent) failed(err error, problems []string) error {
	st := a.Status()
	if problems == nil {
		problems = st.Problems
	}
	a.publish(st.Policies, problems, err.Error())
	return err
}

// publish makes the loop's state visible to Status.
func (a *Agent) publish(policies int, problems []string, lastError string) {
	st := agentapi.Status{
		Ready:      a.generation > 0,
		Mode:       string(a.mode),
		Generation: a.generation,
		Pods:       []agentapi.PodStatus{},
		Policies:   policies,
		Problems:   problems,
		LastApply:  a.lastGood.at,
		LastError:  lastError,
		Stats: agentapi.Stats{
			Chains: a.lastGood.stats.Chains, Rules: a.lastGood.stats.Rules,
			Sets: a.lastGood.stats.Sets, SetEntries: a.lastGood.stats.SetEntries,
		},
	}
	for _, att := range a.reg.sorted() {
		seq, ok := a.applied[att.api.Key]
		st.Pods = append(st.Pods, agentapi.PodStatus{
			Namespace: att.api.Namespace, Name: att.api.Name, Key: att.api.Key,
			IPs: append([]string{}, att.api.IPs...), Programmed: ok && seq == att.seq,
		})
	}
	a.statusMu.Lock()
	a.status = st
	a.statusMu.Unlock()
}
