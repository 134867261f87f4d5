package ipamtest

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// Each bad config gets a CNI error JSON on stdout with the spec's code and a
// message naming the offending value, a non-zero exit, and nothing written.
func TestBadConfigs(t *testing.T) {
	node := harness.NewNode(t)
	pod := node.NewPod(t, "default", "web")
	ctx := ctxFor(t, time.Minute)
	dataDir := node.Dir + "/never-created"
	ipam := func(body string) string {
		return `{"cniVersion":"1.1.0","name":"podnet","type":"bridge","ipam":{"type":"podwall-ipam","dataDir":"` + dataDir + `",` + body + `}}`
	}
	cases := []struct {
		name, stdin string
		code        uint
		mentions    []string
	}{
		{"garbage CIDR", ipam(`"ranges":[{"subnet":"10.244.1.0/33"}]`), 7, []string{"10.244.1.0/33"}},
		{"not a CIDR", ipam(`"ranges":[{"subnet":"pods"}]`), 7, []string{`"pods"`}},
		{"host bits", ipam(`"ranges":[{"subnet":"10.244.1.7/24"}]`), 7, []string{"10.244.1.7/24"}},
		{"bad exclude", ipam(`"ranges":[{"subnet":"10.244.1.0/24"}],"exclude":["10.244.1.300"]`), 7, []string{"10.244.1.300"}},
		{"bad service CIDR", ipam(`"ranges":[{"subnet":"10.244.1.0/24"}],"serviceCIDRs":["10.96.0.0/40"]`), 7, []string{"10.96.0.0/40"}},
		{"overlapping ranges", ipam(`"ranges":[{"subnet":"10.244.0.0/16"},{"subnet":"10.244.1.0/24","draining":true}]`), 7, []string{"10.244.0.0/16", "10.244.1.0/24"}},
		{"range in service CIDR", ipam(`"ranges":[{"subnet":"10.96.1.0/24"}],"serviceCIDRs":["10.96.0.0/12"]`), 7, []string{"10.96.1.0/24", "10.96.0.0/12"}},
		{"nothing left after exclusions", ipam(`"ranges":[{"subnet":"100.64.1.0/24"}],"exclude":["100.64.1.0/25","100.64.1.128/25"]`), 7, []string{"100.64.1.0/24"}},
		{"gateway outside", ipam(`"ranges":[{"subnet":"100.64.1.0/24","gateway":"100.64.2.1"}]`), 7, []string{"100.64.2.1"}},
		{"no ranges", ipam(`"ranges":[]`), 7, []string{"ranges"}},
		{"node with a gateway", ipam(`"ranges":[{"subnet":"node","gateway":"10.244.1.1"}]`), 7, []string{"gateway", `"node"`}},
		{"node twice", ipam(`"ranges":[{"subnet":"node"},{"subnet":"node"}]`), 7, []string{"ranges[1]", "twice"}},
		{"relative nodeCIDRsFile", ipam(`"ranges":[{"subnet":"node"}],"nodeCIDRsFile":"podcidrs.json"`), 7, []string{"podcidrs.json"}},
		{"unknown key", ipam(`"ranges":[{"subnet":"10.244.1.0/24"}],"serviceCIDR":["10.96.0.0/12"]`), 2, []string{"serviceCIDR"}},
		{"not JSON", `{"cniVersion":"1.1.0","name":"podnet","ipam":{`, 6, nil},
		{"unknown cniVersion", strings.Replace(ipam(`"ranges":[{"subnet":"10.244.1.0/24"}]`), `"1.1.0"`, `"9.9.9"`, 1), 1, []string{"9.9.9"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, cmd := range []string{"ADD", "DEL", "CHECK"} {
				out, err := node.InvokePlugin(ctx, "podwall-ipam", cmd, pod, []byte(tc.stdin))
				var perr *harness.PluginError
				if !errors.As(err, &perr) {
					t.Fatalf("%s: want a failing exit, got %v\n%s", cmd, err, out)
				}
				var cniErr struct {
					CNIVersion string `json:"cniVersion"`
					Code       uint   `json:"code"`
					Msg        string `json:"msg"`
					Details    string `json:"details"`
				}
				if err := json.Unmarshal(out, &cniErr); err != nil {
					t.Fatalf("%s: stdout is not a CNI error: %q", cmd, out)
				}
				if cmd == "CHECK" && cniErr.Code == 1 {
					// skel vets the version for CHECK before the plugin sees
					// the config, with a message of its own.
					continue
				}
				if cniErr.Code != tc.code {
					t.Errorf("%s: code %d (%s), want %d", cmd, cniErr.Code, cniErr.Msg, tc.code)
				}
				for _, m := range tc.mentions {
					if !strings.Contains(cniErr.Msg+" "+cniErr.Details, m) {
						t.Errorf("%s: message %q does not name %s", cmd, cniErr.Msg+" "+cniErr.Details, m)
					}
				}
			}
			if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("data dir was created on bad input")
			}
		})
	}
}
