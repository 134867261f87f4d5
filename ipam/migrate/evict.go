// Package migrate moves pods off podwall-ipam's draining ranges: it lists a
// node's pods from the API server and evicts them through the Eviction API
// (policy/v1), so that PodDisruptionBudgets are honoured, as kubectl drain
// does (k8s.io/kubectl/pkg/drain). podwallctl ipam migrate is its command
// line; which pods to move is decided by ipam/report.
package migrate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/podwall/podwall/ipam/report"
)

// evictionCallTimeout bounds one eviction request.
const evictionCallTimeout = 30 * time.Second

// Outcome is how one pod's eviction ended.
type Outcome string

// Outcomes of one pod's eviction.
const (
	OutcomeGone     Outcome = "gone"
	OutcomeReplaced Outcome = "replaced"
	OutcomeFailed   Outcome = "not evicted"
)

// Result is what happened to one candidate.
type Result struct {
	Pod     report.Pod
	Outcome Outcome
	// Err says why a pod is OutcomeFailed.
	Err      error
	Refusals int
	Took     time.Duration
}

// Options tune an Evictor; zero durations take the defaults.
type Options struct {
	// MaxInFlight is how many evicted pods may be going at once (at least 1).
	MaxInFlight int
	// Timeout bounds each pod, from its first attempt to its being gone.
	Timeout time.Duration
	// FirstBackoff (default 1 s) doubles after each refusal by a
	// disruption budget, up to 30 s.
	FirstBackoff time.Duration
	// PollInterval (default 500 ms) is how often an evicted pod is looked
	// up until it is gone.
	PollInterval time.Duration
	// Progress receives one line per step of each pod; nil discards them.
	Progress io.Writer
}

// Evictor evicts candidates through the Eviction API, at most MaxInFlight
// of them going at once: a pod counts from its eviction until it is gone
// or replaced. A pod refused by a disruption budget (429) is retried with
// backoff while the others proceed, until its own deadline.
type Evictor struct {
	client                   kubernetes.Interface
	maxInFlight              int
	timeout                  time.Duration
	firstBackoff, maxBackoff time.Duration
	pollInterval             time.Duration
	out                      io.Writer
}

// NewEvictor returns an Evictor using client.
func NewEvictor(client kubernetes.Interface, o Options) *Evictor {
	e := &Evictor{
		client:       client,
		maxInFlight:  max(o.MaxInFlight, 1),
		timeout:      o.Timeout,
		firstBackoff: cmp.Or(o.FirstBackoff, time.Second),
		maxBackoff:   30 * time.Second,
		pollInterval: cmp.Or(o.PollInterval, 500*time.Millisecond),
		out:          o.Progress,
	}
	if e.out == nil {
		e.out = io.Discard
	}
	return e
}

// pending is a candidate not evicted yet.
type pending struct {
	pod      report.Pod
	started  time.Time // first attempt; zero before it
	nextTry  time.Time
	refusals int
	lastErr  error
}

// Run evicts the candidates in order and returns one result per candidate,
// in the order they completed. Pods no controller recreates are evicted
// only with force; mirror pods never. Progress goes to Options.Progress;
// only the calling goroutine writes there.
func (e *Evictor) Run(ctx context.Context, candidates []report.MigrationCandidate, force bool) []Result {
	var results []Result
	var queue []*pending
	for _, c := range candidates {
		if reason := refusedUpfront(c.Pod, force); reason != nil {
			e.printf("%s/%s: %v\n", c.Pod.Namespace, c.Pod.Name, reason)
			results = append(results, Result{Pod: c.Pod, Outcome: OutcomeFailed, Err: reason})
			continue
		}
		queue = append(queue, &pending{pod: c.Pod})
	}

	done := make(chan Result)
	inFlight := 0
	for len(queue) > 0 || inFlight > 0 {
		if ctx.Err() != nil {
			break
		}
		now := time.Now()
		// Start what the free slots and the backoffs allow, in order.
		for i := 0; i < len(queue) && inFlight < e.maxInFlight; {
			p := queue[i]
			if p.nextTry.After(now) {
				i++
				continue
			}
			if r, started := e.attempt(ctx, p, now); started {
				inFlight++
				go func() { done <- e.awaitGone(ctx, p) }()
			} else if r != nil {
				results = append(results, *r)
			} else {
				i++ // refused, retried later
				continue
			}
			queue = append(queue[:i], queue[i+1:]...)
		}
		if len(queue) == 0 && inFlight == 0 {
			break
		}
		var wake <-chan time.Time
		var timer *time.Timer
		if next, ok := earliestRetry(queue, inFlight < e.maxInFlight); ok {
			timer = time.NewTimer(time.Until(next))
			wake = timer.C
		}
		select {
		case r := <-done:
			inFlight--
			results = append(results, r)
			e.printResult(r)
		case <-wake:
		case <-ctx.Done():
		}
		if timer != nil {
			timer.Stop()
		}
	}
	// Interrupted: collect the pods in flight (awaitGone returns on ctx)
	// and report what was never evicted.
	for ; inFlight > 0; inFlight-- {
		results = append(results, <-done)
	}
	for _, p := range queue {
		err := fmt.Errorf("not evicted: %w", context.Cause(ctx))
		if p.lastErr != nil {
			err = fmt.Errorf("%w (last refusal: %v)", err, p.lastErr)
		}
		results = append(results, Result{Pod: p.pod, Outcome: OutcomeFailed, Err: err, Refusals: p.refusals})
	}
	return results
}

// refusedUpfront says why a pod is not evicted at all.
func refusedUpfront(p report.Pod, force bool) error {
	switch {
	case p.Mirror:
		return errors.New("mirror of a static pod: evicting it recreates the mirror, not the pod; restart it on the node")
	case !p.Controlled && !p.Terminating && !force:
		return errors.New("no controller recreates it: not evicted without --force")
	}
	return nil
}

// attempt evicts p once. started: p is going (await it); else a non-nil
// result ends p, and nil means refused, to be retried at p.nextTry.
func (e *Evictor) attempt(ctx context.Context, p *pending, now time.Time) (*Result, bool) {
	if p.started.IsZero() {
		p.started = now
	}
	name := p.pod.Namespace + "/" + p.pod.Name
	if p.pod.Terminating {
		e.printf("%s: already terminating, waiting for it to be gone\n", name)
		return nil, true
	}
	uid := types.UID(p.pod.UID)
	eviction := &policyv1.Eviction{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.pod.Namespace, Name: p.pod.Name},
		// The UID precondition keeps a replacement of the same name (a
		// StatefulSet's) from being evicted in its stead.
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
	}
	// A stalled call must not hold up the other pods for long.
	callCtx, cancel := context.WithTimeout(ctx, evictionCallTimeout)
	err := e.client.CoreV1().Pods(p.pod.Namespace).EvictV1(callCtx, eviction)
	cancel()
	switch {
	case err == nil:
		e.printf("%s: evicted, waiting for it to be gone\n", name)
		return nil, true
	case apierrors.IsNotFound(err):
		r := &Result{Pod: p.pod, Outcome: OutcomeGone, Refusals: p.refusals, Took: now.Sub(p.started)}
		e.printResult(*r)
		return r, false
	case apierrors.IsConflict(err):
		// The UID precondition failed: a new pod has the name.
		r := &Result{Pod: p.pod, Outcome: OutcomeReplaced, Refusals: p.refusals, Took: now.Sub(p.started)}
		e.printResult(*r)
		return r, false
	case apierrors.IsTooManyRequests(err):
		err = refusal(err)
		p.refusals++
		p.lastErr = err
		deadline := p.started.Add(e.timeout)
		if !now.Before(deadline) {
			r := &Result{Pod: p.pod, Outcome: OutcomeFailed, Refusals: p.refusals, Took: now.Sub(p.started),
				Err: fmt.Errorf("eviction refused %d times over %v, last: %w", p.refusals, now.Sub(p.started).Round(time.Millisecond), err)}
			e.printResult(*r)
			return r, false
		}
		wait := e.backoff(p.refusals)
		if seconds, ok := apierrors.SuggestsClientDelay(err); ok {
			wait = max(wait, time.Duration(seconds)*time.Second)
		}
		if p.refusals == 1 {
			e.printf("%s: eviction refused: %v; retrying with backoff for up to %v\n", name, err, e.timeout)
		}
		p.nextTry = now.Add(wait)
		if p.nextTry.After(deadline) {
			p.nextTry = deadline
		}
		return nil, false
	default:
		r := &Result{Pod: p.pod, Outcome: OutcomeFailed, Refusals: p.refusals, Took: now.Sub(p.started), Err: fmt.Errorf("eviction failed: %w", err)}
		e.printResult(*r)
		return r, false
	}
}

// awaitGone polls p until it is deleted or replaced by a pod of the same
// name, or its deadline passes.
func (e *Evictor) awaitGone(ctx context.Context, p *pending) Result {
	deadline := p.started.Add(e.timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ticker := time.NewTicker(e.pollInterval)
	defer ticker.Stop()
	result := func(outcome Outcome, err error) Result {
		return Result{Pod: p.pod, Outcome: outcome, Err: err, Refusals: p.refusals, Took: time.Since(p.started)}
	}
	var lastErr error
	for {
		pod, err := e.client.CoreV1().Pods(p.pod.Namespace).Get(ctx, p.pod.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return result(OutcomeGone, nil)
		case err == nil && string(pod.UID) != p.pod.UID:
			return result(OutcomeReplaced, nil)
		case err != nil && ctx.Err() == nil:
			lastErr = err // transient: keep polling until the deadline
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			msg := "evicted but still there"
			if lastErr != nil {
				msg = fmt.Sprintf("evicted, then could not be read (%v)", lastErr)
			}
			return result(OutcomeFailed, fmt.Errorf("%s after %v: %w (is the node's kubelet running?)", msg, time.Since(p.started).Round(time.Millisecond), context.Cause(ctx)))
		}
	}
}

// refusal adds the causes the API server gives (which disruption budget,
// why) to a 429's message.
func refusal(err error) error {
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Details == nil {
		return err
	}
	var causes []string
	for _, c := range status.Status().Details.Causes {
		if c.Message != "" {
			causes = append(causes, c.Message)
		}
	}
	if len(causes) == 0 {
		return err
	}
	return fmt.Errorf("%w (%s)", err, strings.Join(causes, "; "))
}

func (e *Evictor) backoff(refusals int) time.Duration {
	d := e.firstBackoff
	for i := 1; i < refusals && d < e.maxBackoff; i++ {
		d *= 2
	}
	return min(d, e.maxBackoff)
}

// earliestRetry is when the next queued pod may be tried; only relevant
// with a free slot.
func earliestRetry(queue []*pending, slotFree bool) (time.Time, bool) {
	if !slotFree || len(queue) == 0 {
		return time.Time{}, false
	}
	next := queue[0].nextTry
	for _, p := range queue[1:] {
		if p.nextTry.Before(next) {
			next = p.nextTry
		}
	}
	return next, true
}

func (e *Evictor) printResult(r Result) {
	name := r.Pod.Namespace + "/" + r.Pod.Name
	if r.Err != nil {
		e.printf("%s: %s: %v\n", name, r.Outcome, r.Err)
		return
	}
	e.printf("%s: %s after %v\n", name, r.Outcome, r.Took.Round(time.Millisecond))
}

func (e *Evictor) printf(format string, args ...any) {
	fmt.Fprintf(e.out, format, args...)
}

// EvictionRefusalsToCaller wraps a client's transport (rest.Config.Wrap)
// so that a refused eviction reaches the Evictor: it keeps client-go from retrying a refused eviction
// by itself: it would honour the server's Retry-After inside one call, up to
// ten times, so the refusal would be neither seen nor reported and the other
// pods would wait. The header is dropped from a 429 to an eviction; the
// suggested delay still reaches the evictor through the error's details.
func EvictionRefusalsToCaller(next http.RoundTripper) http.RoundTripper {
	return evictionRefusalsToCaller{next: next}
}

type evictionRefusalsToCaller struct{ next http.RoundTripper }

func (t evictionRefusalsToCaller) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests && req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/eviction") {
		resp.Header.Del("Retry-After")
	}
	return resp, err
}
