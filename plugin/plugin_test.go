package plugin

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podwall/podwall/enforcement/dataplane"
	"github.com/podwall/podwall/enforcement/ruleset"
)

func code(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"podnet","type":"podwall","runtimeConfig":{"x":1},"args":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentSocket != DefaultAgentSocket || c.AgentTimeout != DefaultAgentTimeout || c.StateDir != "/run/podwall" {
		t.Errorf("defaults: %+v", c)
	}
	c, err = ParseConfig([]byte(`{"cniVersion":"0.4.0","name":"n","type":"podwall","agentSocket":"/tmp/x/a.sock","agentTimeout":"300ms"}`))
	if err != nil || c.AgentTimeout != 300*time.Millisecond || c.StateDir != "/tmp/x" {
		t.Errorf("explicit: %+v %v", c, err)
	}
	for conf, want := range map[string]uint{
		`{`: types.ErrDecodingFailure,
		`{"cniVersion":"1.1.0","type":"podwall"}`:                                           types.ErrInvalidNetworkConfig,
		`{"cniVersion":"1.1.0","name":"n","type":"other"}`:                                  types.ErrInvalidNetworkConfig,
		`{"cniVersion":"0.3.1","name":"n","type":"podwall"}`:                                types.ErrIncompatibleCNIVersion,
		`{"cniVersion":"1.1.0","name":"n","type":"podwall","agentTimeout":"-1s"}`:           types.ErrInvalidNetworkConfig,
		`{"cniVersion":"1.1.0","name":"n","type":"podwall","agentSocket":"rel/agent.sock"}`: types.ErrInvalidNetworkConfig,
	} {
		if _, err := ParseConfig([]byte(conf)); code(err) != want {
			t.Errorf("%s: %v, want code %d", conf, err, want)
		}
	}
}

func TestValidAttachments(t *testing.T) {
	if _, err := validAttachments([]byte(`{"name":"n"}`)); code(err) != types.ErrInvalidNetworkConfig {
		t.Errorf("absent list: %v", err)
	}
	if got, err := validAttachments([]byte(`{"cni.dev/valid-attachments":null}`)); err != nil || len(got) != 0 {
		t.Errorf("null list: %v %v", got, err)
	}
	got, err := validAttachments([]byte(`{"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}`))
	if err != nil || len(got) != 1 || got[0].ContainerID != "c1" || got[0].IfName != "eth0" {
		t.Errorf("list: %v %v", got, err)
	}
}

func TestPodFromResult(t *testing.T) {
	c := &Config{NetConf: types.NetConf{Name: "podnet"}}
	args := &skel.CmdArgs{ContainerID: "cid1", IfName: "eth0", Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a"}
	zero, one := 0, 2
	res := &current.Result{
		Interfaces: []*current.Interface{{Name: "cni0"}, {Name: "veth1"}, {Name: "eth0", Sandbox: "/run/netns/p"}},
		IPs: []*current.IPConfig{
			{Interface: &one, Address: net.IPNet{IP: net.ParseIP("10.0.0.2"), Mask: net.CIDRMask(24, 32)}},
			{Interface: &one, Address: net.IPNet{IP: net.ParseIP("fd00::2"), Mask: net.CIDRMask(64, 128)}},
			{Interface: &zero, Address: net.IPNet{IP: net.ParseIP("10.0.0.1"), Mask: net.CIDRMask(24, 32)}},
		},
	}
	info := func(name string) (bool, string, error) {
		if name == "veth1" {
			return true, "cni0", nil
		}
		return false, "", nil
	}
	p, err := podFromResult(c, args, res, info)
	if err != nil {
		t.Fatal(err)
	}
	if p.HostIface != "veth1" || p.Layout != dataplane.LayoutBridge || p.Bridge != "cni0" || p.Namespace != "x" || p.Name != "a" ||
		len(p.IPs) != 2 || p.Key != ruleset.ChainKey("podnet", "cid1", "eth0") {
		t.Errorf("pod: %+v", p)
	}
	routed := func(name string) (bool, string, error) { return name == "veth1", "", nil }
	if p, err := podFromResult(c, args, res, routed); err != nil || p.Layout != dataplane.LayoutRouted {
		t.Errorf("routed: %+v %v", p, err)
	}
	none := func(string) (bool, string, error) { return false, "", nil }
	if _, err := podFromResult(c, args, res, none); code(err) != types.ErrInvalidNetworkConfig {
		t.Errorf("no veth: %v", err)
	}
}
