package cyclonus

import (
	"fmt"
	"net/netip"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
)

// Endpoint is a pod of the model as it runs: where its probes start and
// the address they go to.
type Endpoint struct {
	Ref   string // namespace/name
	NetNS NetNS
	IP    netip.Addr
}

// Check is one probe of a step with the matcher's verdict in full.
type Check struct {
	Probe
	Source, Destination Endpoint
	Verdict             *matcher.AllowedResult
}

// Counts say what steps probed and what they left out.
type Counts struct {
	Probes, Allowed, Retried int
	// Self: pod-to-itself, which goes over the pod's own loopback and
	// never reaches a chain. SCTP: this kernel has no SCTP sockets.
	Self, SCTP int
}

// Add adds o to n.
func (n *Counts) Add(o Counts) {
	n.Probes += o.Probes
	n.Allowed += o.Allowed
	n.Retried += o.Retried
	n.Self += o.Self
	n.SCTP += o.SCTP
}

// ProbeStep tries every connection a step's probe config asks for between
// the pods of c, as they run (live), with real packets, and judges each
// with cyclonus' matcher over c.Oracle(denyMode). It returns the checks
// whose packets disagree with the matcher, and the counts.
func (pt ProbeTiming) ProbeStep(c *Cluster, denyMode bool, pc *generator.ProbeConfig, live func(*Pod) (Endpoint, bool)) ([]*Check, Counts, error) {
	var n Counts
	targets, err := Targets(pc, ContainerPorts())
	if err != nil {
		return nil, n, err
	}
	oracle := c.Oracle(denyMode)
	var checks []*Check
	for _, from := range c.Pods {
		for _, to := range c.Pods {
			src, ok := live(from)
			if !ok {
				return nil, n, fmt.Errorf("no running pod for %s/%s", from.Namespace, from.Name)
			}
			dst, ok := live(to)
			if !ok {
				return nil, n, fmt.Errorf("no running pod for %s/%s", to.Namespace, to.Name)
			}
			for _, tg := range targets {
				switch {
				case tg.Protocol == corev1.ProtocolSCTP:
					n.SCTP++
					continue
				case src.Ref == dst.Ref:
					n.Self++
					continue
				}
				verdict := oracle.IsTrafficAllowed(&matcher.Traffic{
					Source:           c.Peer(from, src.IP.String()),
					Destination:      c.Peer(to, dst.IP.String()),
					ResolvedPort:     tg.Port,
					ResolvedPortName: tg.PortName,
					Protocol:         tg.Protocol,
				})
				checks = append(checks, &Check{
					Probe:  Probe{From: src.NetNS, To: dst.IP, Target: tg, Want: verdict.IsAllowed()},
					Source: src, Destination: dst, Verdict: verdict,
				})
			}
		}
	}
	probes := make([]*Probe, len(checks))
	for i, ch := range checks {
		probes[i] = &ch.Probe
	}
	pt.Run(probes)
	var mismatches []*Check
	for _, ch := range checks {
		n.Probes++
		if ch.Want {
			n.Allowed++
		}
		if ch.Retried {
			n.Retried++
		}
		if ch.Got != ch.Want {
			mismatches = append(mismatches, ch)
		}
	}
	return mismatches, n, nil
}
