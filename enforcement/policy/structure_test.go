package policy_test

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/podwall/podwall/enforcement/policy"
	"github.com/podwall/podwall/enforcement/ruleset"
)

func TestChainKeyAndNames(t *testing.T) {
	k := policy.ChainKey("podnet", "0123456789abcdef", "eth0")
	if k != policy.ChainKey("podnet", "0123456789abcdef", "eth0") {
		t.Error("ChainKey is not stable")
	}
	if k == policy.ChainKey("podnet", "0123456789abcdef", "eth1") || k == policy.ChainKey("podnet0", "123456789abcdef", "eth0") {
		t.Error("ChainKey does not tell attachments apart")
	}
	in, out, err := policy.ChainNames(k)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{in, out} {
		if len(n) > 28 || !strings.HasPrefix(n, policy.Prefix) {
			t.Errorf("chain name %q: want at most 28 characters starting with %s", n, policy.Prefix)
		}
	}
	if in == out {
		t.Error("ingress and egress chains share a name")
	}
	for _, bad := range []string{"", "ABCDEFGHIJKLMNOPQ", "has-dash", "sp ace", "é"} {
		if _, _, err := policy.ChainNames(bad); err == nil {
			t.Errorf("ChainNames(%q) accepted a bad key", bad)
		}
	}
}

func TestChainKeysDecideWhatGetsChains(t *testing.T) {
	c := baseCluster()
	in := c.input(policy.ModeKubernetes, "node-1")
	web := ruleset.Ref{Namespace: "prod", Name: "web"}
	mon := ruleset.Ref{Namespace: "ops", Name: "mon"}
	ghost := ruleset.Ref{Namespace: "prod", Name: "ghost"}
	db := ruleset.Ref{Namespace: "prod", Name: "db"}
	api := ruleset.Ref{Namespace: "prod", Name: "api"}
	tool := ruleset.Ref{Namespace: "dev", Name: "tool"}
	delete(in.ChainKeys, web)     // scheduled here, not attached yet
	in.ChainKeys[ghost] = "GHOST" // attached, but the agent has no manifest
	in.ChainKeys[mon] = "MON"     // manifest says node-2
	in.ChainKeys[db] = "SHARED"   // two pods claim one key
	in.ChainKeys[api] = "SHARED"
	in.ChainKeys[tool] = "bad-key"
	d, err := policy.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, d)

	if !reflect.DeepEqual(d.Pending, []ruleset.Ref{tool, web}) {
		t.Errorf("Pending = %v, want [dev/tool prod/web]", d.Pending)
	}
	var problems []string
	for _, p := range d.Problems {
		problems = append(problems, p.Error())
	}
	for _, want := range []string{
		"ChainKey dev/tool: no chains",
		"ChainKey ops/mon: pod is scheduled on node \"node-2\" but attached here",
		"ChainKey prod/api: chain key SHARED is claimed by 2 pods",
		"ChainKey prod/db: chain key SHARED is claimed by 2 pods",
	} {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, want) }) {
			t.Errorf("no problem starting with %q in:\n%s", want, strings.Join(problems, "\n"))
		}
	}

	if len(problems) != 4 {
		t.Errorf("want 4 problems, got:\n%s", strings.Join(problems, "\n"))
	}

	dropsAll := func(name string) {
		t.Helper()
		for _, f := range ruleset.Families() {
			ch := d.Chain(f, name)
			if ch == nil || len(ch.Rules) != 1 || ch.Rules[0][len(ch.Rules[0])-1] != policy.TargetDeny {
				t.Errorf("chain %s (%s) should only drop, got %+v", name, f, ch)
			}
		}
	}
	for _, key := range []string{"GHOST", "SHARED"} {
		inName, outName, _ := policy.ChainNames(key)
		dropsAll(inName)
		dropsAll(outName)
	}
	// Enforced here although its manifest names another node.
	monIn, _, _ := policy.ChainNames("MON")
	if d.Chain(ruleset.IPv4, monIn) == nil {
		t.Errorf("attached pod ops/mon has no chain")
	}
	var pods []string
	for _, lp := range d.Pods {
		pods = append(pods, lp.Pod.String()+"="+lp.Key)
	}
	want := "dev/web=" + policy.ChainKey("test-net", "dev", "web", "eth0") + " ops/mon=MON prod/api=SHARED prod/db=SHARED prod/ghost=GHOST"
	if strings.Join(pods, " ") != want {
		t.Errorf("Pods = %s\nwant   %s", strings.Join(pods, " "), want)
	}
}

// Compilation depends on the content of the input, not its order.
func TestDeterministic(t *testing.T) {
	c := syntheticCluster(400, 12, 80)
	in := c.input(policy.ModeDeny, "node-1")
	first, err := policy.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3 {
		rng.Shuffle(len(in.Pods), func(a, b int) { in.Pods[a], in.Pods[b] = in.Pods[b], in.Pods[a] })
		rng.Shuffle(len(in.Policies), func(a, b int) { in.Policies[a], in.Policies[b] = in.Policies[b], in.Policies[a] })
		rng.Shuffle(len(in.Namespaces), func(a, b int) { in.Namespaces[a], in.Namespaces[b] = in.Namespaces[b], in.Namespaces[a] })
		again, err := policy.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(first, again) {
			t.Fatalf("shuffle %d: output differs", i)
		}
	}
	if first.Stats().Rules == 0 || len(first.Sets) == 0 {
		t.Fatalf("synthetic cluster compiled to nothing: %+v", first.Stats())
	}
}

func TestIdenticalPeersShareOneSet(t *testing.T) {
	c := baseCluster()
	peer := func(ns, name, values string) string {
		return fmt.Sprintf(`
metadata: {namespace: %s, name: %s}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}, podSelector: {matchExpressions: [{key: app, operator: In, values: [%s]}]}}]}]`, ns, name, values)
	}
	c.policies = append(c.policies,
		mustPolicy(t, peer("prod", "one", "web, api")),
		mustPolicy(t, peer("prod", "two", "api, web")), // same meaning, other order
		mustPolicy(t, peer("dev", "three", "web, api")),
	)
	d, _ := compileNode(t, c, policy.ModeKubernetes, "node-1")
	var podSets []string
	for _, s := range d.Sets {
		if s.Type == ruleset.SetHashIP {
			podSets = append(podSets, s.Name)
		}
	}
	if len(podSets) != 2 { // one per family
		t.Errorf("want one pod set per family for three identical peers, got %v", podSets)
	}
}

// Rules grow with local pods and the policies that select them; peers only
// grow set entries.
func TestRuleCountIndependentOfPeerPods(t *testing.T) {
	small := syntheticCluster(1000, 10, 60)
	big := syntheticCluster(1000, 10, 60)
	big.addRemoteCopies(9000)
	ds, err := policy.Compile(small.input(policy.ModeDeny, "node-1"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := policy.Compile(big.input(policy.ModeDeny, "node-1"))
	if err != nil {
		t.Fatal(err)
	}
	s, b := ds.Stats(), db.Stats()
	if s.Rules != b.Rules || s.Chains != b.Chains || s.Sets != b.Sets {
		t.Errorf("ten times the peer pods changed the rules: %+v vs %+v", s, b)
	}
	if b.SetEntries <= s.SetEntries {
		t.Errorf("more peer pods should mean more set entries: %+v vs %+v", s, b)
	}
}

// The chains of one pod read like prose in iptables -S.
func TestChainsReadLikeProse(t *testing.T) {
	c := newTestCluster()
	c.setNamespace("shop", map[string]string{"team": "shop"})
	c.addPod("shop", "db", map[string]string{"app": "db"}, "10.9.0.2", "", ports("pg=5432/TCP"))
	c.addPod("shop", "web", map[string]string{"app": "web"}, "10.9.0.3", "", nil, "node-2")
	c.policies = append(c.policies,
		mustPolicy(t, `
metadata: {namespace: shop, name: db-from-web}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}, {ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
    ports: [{port: pg}]`),
		mustPolicy(t, `
metadata: {namespace: shop, name: db-deny-egress}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]`))
	d, _ := compileNode(t, c, policy.ModeDeny, "node-1")
	var b strings.Builder
	for _, ch := range d.Chains {
		if ch.Family != ruleset.IPv4 {
			continue
		}
		for _, r := range ch.Rules {
			fmt.Fprintf(&b, "-A %s %s\n", ch.Name, r)
		}
	}
	for _, s := range d.Sets {
		fmt.Fprintf(&b, "set %s %s %s: %s\n", s.Name, s.Type, s.Comment, strings.Join(s.Members, " "))
	}
	in, out, _ := policy.ChainNames(policy.ChainKey("test-net", "shop", "db", "eth0"))
	want := strings.NewReplacer("<in>", in, "<out>", out).Replace(`-A <in> -p tcp -m set --match-set PODWALL-PODS4-HF75MU564MSOSPCH src -m tcp --dport 5432 -m comment --comment "shop/db ingress: allowed by shop/db-from-web rule 1 from pods [app=web] in namespace shop" -j RETURN
-A <in> -p tcp -m set --match-set PODWALL-CIDR4-B77MUZUCLU72CLQT src -m tcp --dport 5432 -m comment --comment "shop/db ingress: allowed by shop/db-from-web rule 1 from ipBlock 192.0.2.0/24 except 192.0.2.128/25" -j RETURN
-A <in> -m comment --comment "shop/db ingress: default deny (selected by shop/db-from-web)" -j DROP
-A <out> -m comment --comment "shop/db egress: isolated by shop/db-deny-egress, which allows nothing here"
-A <out> -m comment --comment "shop/db egress: default deny (selected by shop/db-deny-egress)" -j DROP
set PODWALL-CIDR4-B77MUZUCLU72CLQT hash:net ipBlock 192.0.2.0/24 except 192.0.2.128/25: 192.0.2.0/24 192.0.2.128/25 nomatch
set PODWALL-PODS4-HF75MU564MSOSPCH hash:ip pods [app=web] in namespace shop (IPv4): 10.9.0.3
`)
	if got := b.String(); got != want {
		t.Errorf("iptables -S of shop/db:\n%s\nwant:\n%s", got, want)
	}
}
