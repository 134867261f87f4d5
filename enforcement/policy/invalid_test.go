package policy_test

import (
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
	corev1 "k8s.io/api/core/v1"
)

// An invalid policy is reported, allows nothing, and still isolates what it
// selects; every other policy keeps working.
func TestInvalidPolicies(t *testing.T) {
	const webToAPI = `
metadata: {namespace: prod, name: web-to-api}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]`

	// dbPolicy is an ingress policy for prod/db whose only rule is given.
	dbPolicy := func(rule string) string {
		return `
metadata: {namespace: prod, name: bad}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - ` + rule
	}
	// dbIsolatedNoAllows: db is isolated for ingress and nothing opens it;
	// the valid policy still works; db's egress is untouched.
	dbIsolatedNoAllows := []expectation{
		{"prod/web", "prod/db", "TCP/5432", false},
		{"192.0.2.1", "prod/db", "TCP/5432", false},
		{"prod/web", "prod/api", "TCP/9000", true},
		{"prod/db", "prod/web", "TCP/8080", true},
	}

	cases := []struct {
		name    string
		policy  string
		wantErr string
		v4      []expectation
	}{
		{
			name: "bad operator in the policy's podSelector isolates its whole namespace",
			policy: `
metadata: {namespace: prod, name: bad}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Maybe, values: [db]}]}
  policyTypes: [Ingress]
  ingress: [{}]`,
			wantErr: "spec.podSelector",
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/5432", false},
				{"dev/web", "prod/web", "TCP/8080", false},
				{"prod/web", "prod/api", "TCP/9000", true}, // web-to-api still allows
				{"dev/web", "prod/api", "TCP/9000", false},
				{"prod/db", "dev/web", "TCP/8081", true}, // egress untouched
				{"dev/tool", "dev/web", "TCP/8081", true},
			},
		},
		{
			name:    "bad operator in a peer selector",
			policy:  dbPolicy(`from: [{podSelector: {matchExpressions: [{key: app, operator: Maybe, values: [web]}]}}]`),
			wantErr: "spec.ingress[0].from[0]: podSelector",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "bad label value",
			policy:  dbPolicy(`from: [{podSelector: {matchLabels: {app: "not valid!"}}}]`),
			wantErr: "podSelector",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "In without values",
			policy:  dbPolicy(`from: [{namespaceSelector: {matchExpressions: [{key: env, operator: In, values: []}]}}]`),
			wantErr: "namespaceSelector",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "Exists with values",
			policy:  dbPolicy(`from: [{podSelector: {matchExpressions: [{key: app, operator: Exists, values: [web]}]}}]`),
			wantErr: "podSelector",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "bad CIDR",
			policy:  dbPolicy(`from: [{ipBlock: {cidr: 10.1.0.0/33}}]`),
			wantErr: "invalid CIDR",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "except outside the cidr",
			policy:  dbPolicy(`from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.2.0.0/24]}}]`),
			wantErr: "strict subset",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "except equal to the cidr",
			policy:  dbPolicy(`from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.0.0/16]}}]`),
			wantErr: "strict subset",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "except of the other family",
			policy:  dbPolicy(`from: [{ipBlock: {cidr: 0.0.0.0/0, except: ["::/1"]}}]`),
			wantErr: "strict subset",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "ipBlock together with a selector",
			policy:  dbPolicy(`from: [{ipBlock: {cidr: 10.1.0.0/16}, podSelector: {}}]`),
			wantErr: "may not specify both",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "empty peer",
			policy:  dbPolicy(`from: [{}]`),
			wantErr: "must specify a peer",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "endPort below port",
			policy:  dbPolicy(`ports: [{port: 6000, endPort: 5000}]`),
			wantErr: "endPort",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "endPort with a named port",
			policy:  dbPolicy(`ports: [{port: http, endPort: 6000}]`),
			wantErr: "named port",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "endPort without port",
			policy:  dbPolicy(`ports: [{endPort: 6000}]`),
			wantErr: "port is not specified",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "unknown protocol",
			policy:  dbPolicy(`ports: [{protocol: ICMP, port: 1}]`),
			wantErr: "unsupported protocol",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "port zero",
			policy:  dbPolicy(`ports: [{port: 0}]`),
			wantErr: "port: 0",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "port out of range",
			policy:  dbPolicy(`ports: [{port: 70000}]`),
			wantErr: "port: 70000",
			v4:      dbIsolatedNoAllows,
		},
		{
			name:    "invalid port name",
			policy:  dbPolicy(`ports: [{port: HTTP_PORT}]`),
			wantErr: "invalid port name",
			v4:      dbIsolatedNoAllows,
		},
		{
			name: "one bad rule voids the good ones too",
			policy: dbPolicy(`from: [{podSelector: {matchLabels: {app: web}}}]
  - from: [{ipBlock: {cidr: nonsense}}]`),
			wantErr: "spec.ingress[1]",
			v4:      dbIsolatedNoAllows,
		},
		{
			name: "a bad egress rule counts even when policyTypes leave egress out",
			policy: `
metadata: {namespace: prod, name: bad}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
  egress: [{ports: [{port: 5, endPort: 1}]}]`,
			wantErr: "spec.egress[0]",
			v4:      dbIsolatedNoAllows,
		},
		{
			name: "unknown policyType isolates both directions",
			policy: `
metadata: {namespace: prod, name: bad}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Sideways]
  ingress: [{}]
  egress: [{}]`,
			wantErr: "spec.policyTypes",
			v4: []expectation{
				{"prod/web", "prod/db", "TCP/5432", false},
				{"prod/db", "prod/web", "TCP/8080", false},
				{"prod/db", "192.0.2.1", "TCP/443", false},
				{"prod/web", "prod/api", "TCP/9000", true},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := baseCluster()
			c.policies = append(c.policies, mustPolicy(t, tc.policy), mustPolicy(t, webToAPI))
			w := compileWorld(t, c, policy.ModeKubernetes)
			problems := w.desired["node-1"].Problems
			if len(problems) != 1 {
				t.Fatalf("want exactly one problem, got %v", problems)
			}
			p := problems[0]
			if p.Kind != "NetworkPolicy" || p.Namespace != "prod" || p.Name != "bad" || !strings.Contains(p.Error(), tc.wantErr) {
				t.Errorf("problem %q: want NetworkPolicy prod/bad mentioning %q", p.Error(), tc.wantErr)
			}
			w.expect(ruleset.IPv4, tc.v4...)
			if t.Failed() {
				t.Logf("compiled:\n%s", w.dump())
			}
		})
	}
}

// In deny mode an invalid policy changes nothing: what it selects was
// already isolated, and it allows nothing.
func TestInvalidPolicyInDenyModeAllowsNothing(t *testing.T) {
	c := baseCluster()
	c.policies = append(c.policies, mustPolicy(t, `
metadata: {namespace: prod, name: bad}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: 1, endPort: 0}]}]
  egress: [{}]`))
	w := compileWorld(t, c, policy.ModeDeny)
	if len(w.desired["node-1"].Problems) != 1 {
		t.Fatalf("want one problem, got %v", w.desired["node-1"].Problems)
	}
	w.expect(ruleset.IPv4,
		expectation{"prod/web", "prod/db", "TCP/1", false},
		expectation{"prod/web", "192.0.2.1", "TCP/1", false},
	)
	// The chain shows who isolates the pod.
	d := w.desired["node-1"]
	found := false
	for _, ch := range d.Chains {
		for _, r := range ch.Rules {
			if strings.Contains(r.String(), "isolated by prod/bad, which is invalid and allows nothing") {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no rule comment names the invalid policy:\n%s", w.dump())
	}
}

func TestOtherProblems(t *testing.T) {
	c := baseCluster()
	c.policies = append(c.policies,
		mustPolicy(t, ingressToDB+`  - {}`),
		mustPolicy(t, ingressToDB+`    []`),
	)
	in := c.input(policy.ModeKubernetes, "node-1")
	in.Pods[0].Status.PodIPs = append(in.Pods[0].Status.PodIPs, corev1.PodIP{IP: "not-an-ip"})
	d, err := policy.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range d.Problems {
		got = append(got, p.Error())
	}
	want := []string{
		`NetworkPolicy prod/to-db: listed more than once; the first one counts`,
		`Pod prod/web: status.podIPs: invalid address "not-an-ip", ignored`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestUnknownMode(t *testing.T) {
	if _, err := policy.Compile(policy.Input{Mode: "open"}); err == nil {
		t.Error("Compile accepted an unknown mode")
	}
	if m, err := policy.ParseMode(""); err != nil || m != policy.ModeDeny {
		t.Errorf(`ParseMode("") = %q, %v; want deny`, m, err)
	}
}
