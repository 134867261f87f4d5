package policy_test

import (
	"testing"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
)

// baseCluster is a small dual-stack cluster for focused tests:
//
//	prod (env=prod, team=a): web {app=web,tier=front}, db {app=db}, api {app=api,canary=true}
//	dev  (env=dev):          web {app=web}, tool {} (IPv4 only)
//	ops  (no labels):        mon {app=mon}, on node-2
//
// 192.0.2.1 and 2001:db8::1 are outside the cluster.
func baseCluster() *testCluster {
	c := newTestCluster()
	c.setNamespace("prod", map[string]string{"env": "prod", "team": "a"})
	c.setNamespace("dev", map[string]string{"env": "dev"})
	c.setNamespace("ops", nil)
	c.addPod("prod", "web", map[string]string{"app": "web", "tier": "front"}, "10.1.0.10", "fd01::10", ports("http=8080/TCP metrics=9090/TCP"))
	c.addPod("prod", "db", map[string]string{"app": "db"}, "10.1.0.20", "fd01::20", ports("http=5432/TCP dns=53/UDP sig=7000/SCTP"))
	c.addPod("prod", "api", map[string]string{"app": "api", "canary": "true"}, "10.1.0.30", "fd01::30", ports("http=9000/TCP"))
	c.addPod("dev", "web", map[string]string{"app": "web"}, "10.2.0.10", "fd02::10", ports("http=8081/TCP"))
	c.addPod("dev", "tool", nil, "10.2.0.20", "", nil)
	c.addPod("ops", "mon", map[string]string{"app": "mon"}, "10.3.0.10", "fd03::10", ports("http=3000/TCP"), "node-2")
	return c
}

const ingressToDB = `
metadata: {namespace: prod, name: to-db}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
`

type semanticsCase struct {
	name     string
	policies []string
	mode     policy.Mode
	v4, v6   []expectation
}

func runSemantics(t *testing.T, cases []semanticsCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := baseCluster()
			for _, doc := range tc.policies {
				c.policies = append(c.policies, mustPolicy(t, doc))
			}
			mode := tc.mode
			if mode == "" {
				mode = policy.ModeKubernetes
			}
			w := compileWorld(t, c, mode)
			for _, d := range w.desired {
				if len(d.Problems) > 0 {
					t.Fatalf("unexpected problems: %v", d.Problems)
				}
			}
			w.expect(ruleset.IPv4, tc.v4...)
			w.expect(ruleset.IPv6, tc.v6...)
			if t.Failed() {
				t.Logf("compiled:\n%s", w.dump())
			}
		})
	}
}

func TestPeerSelection(t *testing.T) {
	runSemantics(t, []semanticsCase{
		{
			name:     "podSelector alone selects in the policy's namespace",
			policies: []string{ingressToDB + `  - from: [{podSelector: {matchLabels: {app: web}}}]`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/5432", true},
				{"dev/web", "prod/db", "TCP/5432", false},
				{"prod/api", "prod/db", "TCP/5432", false},
				{"192.0.2.1", "prod/db", "TCP/5432", false},
			},
			v6: []expectation{
				{"prod/web", "prod/db", "TCP/5432", true},
				{"dev/web", "prod/db", "TCP/5432", false},
			},
		},
		{
			name:     "namespaceSelector alone selects every pod of matching namespaces",
			policies: []string{ingressToDB + `  - from: [{namespaceSelector: {matchLabels: {env: dev}}}]`},
			v4: []expectation{
				{"dev/web", "prod/db", "TCP/1", true},
				{"dev/tool", "prod/db", "TCP/1", true},
				{"prod/web", "prod/db", "TCP/1", false},
				{"ops/mon", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "namespaceSelector and podSelector together are ANDed",
			policies: []string{ingressToDB + `  - from: [{namespaceSelector: {matchLabels: {env: dev}}, podSelector: {matchLabels: {app: web}}}]`},
			v4: []expectation{
				{"dev/web", "prod/db", "TCP/1", true},
				{"dev/tool", "prod/db", "TCP/1", false},
				{"prod/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "two peers are ORed",
			policies: []string{ingressToDB + `  - from: [{namespaceSelector: {matchLabels: {env: dev}}}, {podSelector: {matchLabels: {app: web}}}]`},
			v4: []expectation{
				{"dev/tool", "prod/db", "TCP/1", true},
				{"prod/web", "prod/db", "TCP/1", true},
				{"prod/api", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "empty namespaceSelector means all namespaces",
			policies: []string{ingressToDB + `  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"dev/web", "prod/db", "TCP/1", true},
				{"prod/api", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "empty podSelector without namespaceSelector means the policy's namespace",
			policies: []string{ingressToDB + `  - from: [{podSelector: {}}]`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"prod/api", "prod/db", "TCP/1", true},
				{"dev/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "empty namespaceSelector alone is every pod, remote ones too, but no outside address",
			policies: []string{ingressToDB + `  - from: [{namespaceSelector: {}}]`},
			v4: []expectation{
				{"ops/mon", "prod/db", "TCP/1", true},
				{"dev/tool", "prod/db", "TCP/1", true},
				{"192.0.2.1", "prod/db", "TCP/1", false},
			},
			v6: []expectation{
				{"ops/mon", "prod/db", "TCP/1", true},
				{"2001:db8::1", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "matchExpressions In",
			policies: []string{ingressToDB + `  - from: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [web, api]}]}}]`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"prod/api", "prod/db", "TCP/1", true},
				{"prod/db", "prod/db", "TCP/1", false},
			},
		},
		{
			// Kubernetes: NotIn matches objects without the key. (cyclonus'
			// matcher says the opposite; no generated case depends on it.)
			name:     "matchExpressions NotIn matches a namespace without the key",
			policies: []string{ingressToDB + `  - from: [{namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}}]`},
			v4: []expectation{
				{"dev/web", "prod/db", "TCP/1", true},
				{"ops/mon", "prod/db", "TCP/1", true},
				{"prod/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "matchExpressions Exists",
			policies: []string{ingressToDB + `  - from: [{podSelector: {matchExpressions: [{key: canary, operator: Exists}]}}]`},
			v4: []expectation{
				{"prod/api", "prod/db", "TCP/1", true},
				{"prod/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "matchExpressions DoesNotExist",
			policies: []string{ingressToDB + `  - from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}}]`},
			v4: []expectation{
				{"dev/tool", "prod/db", "TCP/1", true},
				{"dev/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "matchLabels and matchExpressions are ANDed",
			policies: []string{ingressToDB + `  - from: [{podSelector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [front]}]}, namespaceSelector: {}}]`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"dev/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "the namespace name label is always there",
			policies: []string{ingressToDB + `  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ops}}}]`},
			v4: []expectation{
				{"ops/mon", "prod/db", "TCP/1", true},
				{"dev/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name: "policy podSelector picks the target",
			policies: []string{`
metadata: {namespace: prod, name: only-canary}
spec:
  podSelector: {matchExpressions: [{key: canary, operator: Exists}]}
  policyTypes: [Ingress]`},
			v4: []expectation{
				{"prod/web", "prod/api", "TCP/1", false},
				{"prod/web", "prod/db", "TCP/1", true},
			},
		},
	})
}

func TestRulesFromAndTo(t *testing.T) {
	runSemantics(t, []semanticsCase{
		{
			name:     "a rule with no from allows every source",
			policies: []string{ingressToDB + `  - {}`},
			v4: []expectation{
				{"192.0.2.1", "prod/db", "UDP/9", true},
				{"dev/tool", "prod/db", "SCTP/1", true},
			},
			v6: []expectation{{"2001:db8::1", "prod/db", "TCP/80", true}},
		},
		{
			name:     "an empty from list is the same as none",
			policies: []string{ingressToDB + `  - from: []`},
			v4:       []expectation{{"192.0.2.1", "prod/db", "TCP/80", true}},
		},
		{
			name:     "an empty ingress list denies every source",
			policies: []string{ingressToDB + `    []`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/80", false},
				{"prod/db", "prod/web", "TCP/80", true},
			},
			v6: []expectation{{"prod/web", "prod/db", "TCP/80", false}},
		},
		{
			name:     "ports without from: every source, those ports",
			policies: []string{ingressToDB + `  - ports: [{port: 5432}]`},
			v4: []expectation{
				{"192.0.2.1", "prod/db", "TCP/5432", true},
				{"192.0.2.1", "prod/db", "UDP/5432", false},
			},
		},
		{
			name: "egress: a rule with no to allows every destination",
			policies: []string{`
metadata: {namespace: prod, name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{}]`},
			v4: []expectation{{"prod/web", "192.0.2.1", "TCP/443", true}},
			v6: []expectation{{"prod/web", "2001:db8::1", "TCP/443", true}},
		},
		{
			name: "egress: an empty egress list denies every destination",
			policies: []string{`
metadata: {namespace: prod, name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]`},
			v4: []expectation{
				{"prod/web", "192.0.2.1", "TCP/443", false},
				{"prod/web", "prod/db", "TCP/5432", false},
				{"prod/db", "prod/web", "TCP/8080", true},
			},
		},
		{
			name: "rules of one policy and of several policies are a union",
			policies: []string{
				ingressToDB + `  - from: [{podSelector: {matchLabels: {app: web}}}]
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 5432}]`,
				`
metadata: {namespace: prod, name: db-from-dev}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}}], ports: [{protocol: UDP, port: 53}]}]`,
			},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"prod/api", "prod/db", "TCP/5432", true},
				{"prod/api", "prod/db", "TCP/5433", false},
				{"dev/tool", "prod/db", "UDP/53", true},
				{"dev/tool", "prod/db", "TCP/53", false},
			},
		},
	})
}

func TestPolicyTypesDefaulting(t *testing.T) {
	runSemantics(t, []semanticsCase{
		{
			name: "no policyTypes and no egress rules: ingress only",
			policies: []string{`
metadata: {namespace: prod, name: p}
spec:
  podSelector: {matchLabels: {app: web}}`},
			v4: []expectation{
				{"prod/db", "prod/web", "TCP/8080", false},
				{"prod/web", "192.0.2.1", "TCP/443", true},
			},
		},
		{
			name: "no policyTypes with egress rules: ingress and egress",
			policies: []string{`
metadata: {namespace: prod, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: [{ports: [{protocol: UDP, port: 53}]}]`},
			v4: []expectation{
				{"prod/db", "prod/web", "TCP/8080", false},
				{"prod/web", "192.0.2.1", "TCP/443", false},
				{"prod/web", "192.0.2.1", "UDP/53", true},
			},
		},
		{
			name: "policyTypes Egress only leaves ingress open even with ingress rules",
			policies: []string{`
metadata: {namespace: prod, name: p}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: nobody}}}]}]`},
			v4: []expectation{
				{"prod/db", "prod/web", "TCP/8080", true},
				{"prod/web", "prod/db", "TCP/5432", false},
			},
		},
	})
}

func TestPorts(t *testing.T) {
	to := func(ports string) string {
		return ingressToDB + "  - ports: " + ports
	}
	runSemantics(t, []semanticsCase{
		{
			name:     "protocol defaults to TCP",
			policies: []string{to(`[{port: 5432}]`)},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/5432", true},
				{"prod/web", "prod/db", "UDP/5432", false},
				{"prod/web", "prod/db", "SCTP/5432", false},
				{"prod/web", "prod/db", "TCP/5433", false},
			},
		},
		{
			name:     "UDP and SCTP ports",
			policies: []string{to(`[{protocol: UDP, port: 53}, {protocol: SCTP, port: 7000}]`)},
			v4: []expectation{
				{"prod/web", "prod/db", "UDP/53", true},
				{"prod/web", "prod/db", "SCTP/7000", true},
				{"prod/web", "prod/db", "TCP/53", false},
				{"prod/web", "prod/db", "SCTP/53", false},
			},
			v6: []expectation{{"prod/web", "prod/db", "SCTP/7000", true}},
		},
		{
			name:     "protocol without port: every port of that protocol",
			policies: []string{to(`[{protocol: UDP}]`)},
			v4: []expectation{
				{"prod/web", "prod/db", "UDP/1", true},
				{"prod/web", "prod/db", "UDP/65535", true},
				{"prod/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "endPort range is inclusive",
			policies: []string{to(`[{port: 5000, endPort: 6000}]`)},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/4999", false},
				{"prod/web", "prod/db", "TCP/5000", true},
				{"prod/web", "prod/db", "TCP/6000", true},
				{"prod/web", "prod/db", "TCP/6001", false},
				{"prod/web", "prod/db", "UDP/5500", false},
			},
		},
		{
			name:     "many ports and ranges beyond one multiport match",
			policies: []string{to(`[{port: 1}, {port: 3}, {port: 5}, {port: 7}, {port: 9}, {port: 11}, {port: 13}, {port: 100, endPort: 200}, {port: 300, endPort: 400}, {port: 500, endPort: 600}, {port: 700, endPort: 800}, {port: 900, endPort: 1000}, {port: 2}]`)},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"prod/web", "prod/db", "TCP/2", true},
				{"prod/web", "prod/db", "TCP/4", false},
				{"prod/web", "prod/db", "TCP/13", true},
				{"prod/web", "prod/db", "TCP/150", true},
				{"prod/web", "prod/db", "TCP/250", false},
				{"prod/web", "prod/db", "TCP/1000", true},
				{"prod/web", "prod/db", "TCP/1001", false},
			},
		},
		{
			name:     "ingress named port resolves on the destination pod",
			policies: []string{to(`[{port: http}]`)},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/5432", true},
				{"prod/web", "prod/db", "TCP/8080", false},
				{"prod/web", "prod/db", "UDP/5432", false},
			},
		},
		{
			name:     "a named port on another protocol does not resolve",
			policies: []string{to(`[{port: dns}]`)},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/53", false},
				{"prod/web", "prod/db", "UDP/53", false},
			},
		},
		{
			name:     "a named port the pod does not serve allows nothing",
			policies: []string{to(`[{port: nothere}]`)},
			v4:       []expectation{{"prod/web", "prod/db", "TCP/5432", false}},
		},
		{
			name: "egress named port resolves on each destination pod",
			policies: []string{`
metadata: {namespace: prod, name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}], ports: [{port: http}]}]`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/5432", true},
				{"prod/web", "prod/api", "TCP/9000", true},
				{"prod/web", "dev/web", "TCP/8081", true},
				{"prod/web", "ops/mon", "TCP/3000", true},
				{"prod/web", "prod/db", "TCP/9000", false},
				{"prod/web", "prod/api", "TCP/5432", false},
				{"prod/web", "prod/db", "UDP/5432", false},
				{"prod/web", "dev/tool", "TCP/8081", false},
				{"prod/web", "192.0.2.1", "TCP/5432", false},
			},
			v6: []expectation{
				{"prod/web", "prod/db", "TCP/5432", true},
				{"prod/web", "prod/db", "TCP/9000", false},
			},
		},
		{
			name: "egress named port with no to: any pod serving it",
			policies: []string{`
metadata: {namespace: prod, name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}, {protocol: UDP, port: dns}]}]`},
			v4: []expectation{
				{"prod/web", "dev/web", "TCP/8081", true},
				{"prod/web", "prod/db", "UDP/53", true},
				{"prod/web", "prod/db", "TCP/53", false},
				{"prod/web", "192.0.2.1", "TCP/8081", false},
			},
		},
		{
			name: "egress named port to an ipBlock: pods in the block serving it",
			policies: []string{`
metadata: {namespace: prod, name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.0.30/32]}}], ports: [{port: http}, {port: 443}]}]`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/5432", true},
				{"prod/web", "prod/api", "TCP/9000", false},
				{"prod/web", "dev/web", "TCP/8081", false},
				{"prod/web", "prod/db", "TCP/443", true},
				{"prod/web", "10.1.99.1", "TCP/443", true},
				{"prod/web", "10.1.99.1", "TCP/5432", false},
			},
		},
		{
			name: "egress numeric ports to a pod selector",
			policies: []string{`
metadata: {namespace: prod, name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432}, {protocol: UDP, port: 53}]}]`},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/5432", true},
				{"prod/web", "prod/db", "UDP/53", true},
				{"prod/web", "prod/api", "TCP/5432", false},
			},
		},
	})
}

func TestIPBlocks(t *testing.T) {
	from := func(block string) string {
		return ingressToDB + "  - from: [{ipBlock: " + block + "}]"
	}
	runSemantics(t, []semanticsCase{
		{
			name:     "except inside the cidr",
			policies: []string{from(`{cidr: 10.1.0.0/16, except: [10.1.0.16/28]}`)},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},  // .10
				{"prod/api", "prod/db", "TCP/1", false}, // .30 in .16/28
				{"10.1.200.1", "prod/db", "TCP/1", true},
				{"10.2.0.10", "prod/db", "TCP/1", false},
			},
			v6: []expectation{{"prod/web", "prod/db", "TCP/1", false}},
		},
		{
			name:     "nested excepts and a non-canonical cidr",
			policies: []string{from(`{cidr: 10.1.7.7/16, except: [10.1.0.0/24, 10.1.0.0/28]}`)},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", false},
				{"10.1.1.1", "prod/db", "TCP/1", true},
			},
		},
		{
			name:     "IPv6 cidr with except",
			policies: []string{from(`{cidr: "fd01::/64", except: ["fd01::30/128"]}`)},
			v6: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"prod/api", "prod/db", "TCP/1", false},
				{"dev/web", "prod/db", "TCP/1", false},
			},
			v4: []expectation{{"prod/web", "prod/db", "TCP/1", false}},
		},
		{
			name:     "0.0.0.0/0 with except",
			policies: []string{from(`{cidr: 0.0.0.0/0, except: [10.2.0.0/16]}`)},
			v4: []expectation{
				{"192.0.2.1", "prod/db", "TCP/1", true},
				{"prod/web", "prod/db", "TCP/1", true},
				{"255.255.255.254", "prod/db", "TCP/1", true},
				{"dev/web", "prod/db", "TCP/1", false},
			},
			v6: []expectation{{"2001:db8::1", "prod/db", "TCP/1", false}},
		},
		{
			name:     "0.0.0.0/0 except one of its halves",
			policies: []string{from(`{cidr: 0.0.0.0/0, except: [0.0.0.0/1]}`)},
			v4: []expectation{
				{"192.0.2.1", "prod/db", "TCP/1", true},
				{"prod/web", "prod/db", "TCP/1", false},
			},
		},
		{
			name:     "::/0",
			policies: []string{from(`{cidr: "::/0"}`)},
			v6: []expectation{
				{"2001:db8::1", "prod/db", "TCP/1", true},
				{"ffff::1", "prod/db", "TCP/1", true},
				{"prod/web", "prod/db", "TCP/1", true},
			},
			v4: []expectation{{"192.0.2.1", "prod/db", "TCP/1", false}},
		},
		{
			name: "egress to an ipBlock",
			policies: []string{`
metadata: {namespace: prod, name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}, {ipBlock: {cidr: "2001:db8::/32"}}], ports: [{port: 443}]}]`},
			v4: []expectation{
				{"prod/web", "192.0.2.1", "TCP/443", true},
				{"prod/web", "192.0.2.1", "TCP/80", false},
				{"prod/web", "198.51.100.1", "TCP/443", false},
			},
			v6: []expectation{{"prod/web", "2001:db8::1", "TCP/443", true}},
		},
	})
}

func TestModes(t *testing.T) {
	allowDBFromWeb := ingressToDB + `  - from: [{podSelector: {matchLabels: {app: web}}}]`
	webToDB := `
metadata: {namespace: prod, name: web-to-db}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]`
	runSemantics(t, []semanticsCase{
		{
			name: "kubernetes mode without policies: open",
			mode: policy.ModeKubernetes,
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"192.0.2.1", "dev/tool", "UDP/1", true},
				{"dev/tool", "192.0.2.1", "UDP/1", true},
			},
			v6: []expectation{{"prod/web", "ops/mon", "TCP/1", true}},
		},
		{
			name: "deny mode without policies: closed both ways",
			mode: policy.ModeDeny,
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", false},
				{"192.0.2.1", "dev/tool", "UDP/1", false},
				{"dev/tool", "192.0.2.1", "UDP/1", false},
			},
			v6: []expectation{{"prod/web", "ops/mon", "TCP/1", false}},
		},
		{
			name:     "deny mode: an ingress allow alone is not enough",
			mode:     policy.ModeDeny,
			policies: []string{allowDBFromWeb},
			v4:       []expectation{{"prod/web", "prod/db", "TCP/1", false}},
		},
		{
			name:     "deny mode: ingress and egress allows open the pair",
			mode:     policy.ModeDeny,
			policies: []string{allowDBFromWeb, webToDB},
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/1", true},
				{"prod/db", "prod/web", "TCP/1", false},
				{"prod/api", "prod/db", "TCP/1", false},
			},
			v6: []expectation{{"prod/web", "prod/db", "TCP/1", true}},
		},
		{
			name: "deny mode: egress to an outside address needs only the egress allow",
			mode: policy.ModeDeny,
			policies: []string{`
metadata: {namespace: prod, name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]`},
			v4: []expectation{{"prod/web", "192.0.2.1", "TCP/443", true}},
		},
	})
}

func TestPodWithoutAddressInAFamilyDropsThatFamily(t *testing.T) {
	c := baseCluster()
	for _, mode := range []policy.Mode{policy.ModeKubernetes, policy.ModeDeny} {
		d, _ := compileNode(t, c, mode, "node-1")
		var tool ruleset.LocalPod
		for _, lp := range d.Pods {
			if lp.Pod.Name == "tool" {
				tool = lp
			}
		}
		for _, name := range []string{tool.IngressChain, tool.EgressChain} {
			ch := d.Chain(ruleset.IPv6, name)
			if ch == nil || len(ch.Rules) != 1 || ch.Rules[0][len(ch.Rules[0])-1] != policy.TargetDeny {
				t.Errorf("%s mode: IPv6 chain %s of an IPv4-only pod should only drop: %+v", mode, name, ch)
			}
			if ch4 := d.Chain(ruleset.IPv4, name); ch4 == nil {
				t.Errorf("%s mode: IPv4 chain %s missing", mode, name)
			}
		}
	}
}

func TestRemotePodsAreOnlyPeers(t *testing.T) {
	c := baseCluster()
	c.policies = append(c.policies, mustPolicy(t, ingressToDB+`  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ops}}}]`))
	d, _ := compileNode(t, c, policy.ModeKubernetes, "node-1")
	for _, lp := range d.Pods {
		if lp.Pod.Namespace == "ops" {
			t.Errorf("remote pod %s got chains on node-1", lp.Pod)
		}
	}
	if len(d.Pods) != 5 {
		t.Errorf("want the 5 pods of node-1, got %d", len(d.Pods))
	}
	found := false
	for _, s := range d.Sets {
		for _, m := range s.Members {
			if m == "10.3.0.10" {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("remote pod's address missing from the peer set:\n%+v", d.Sets)
	}
}
