package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
)

// Network is a conflist installed on a node, driven through libcni as a
// container runtime drives it. All methods are safe for concurrent use.
type Network struct {
	Name   string
	Config *libcni.NetworkConfigList
	CNI    *libcni.CNIConfig // for libcni calls the helpers do not wrap

	mu       sync.Mutex
	attached map[types.GCAttachment]*Pod // ADD attempted, no successful DEL yet
}

// Network parses a conflist for the node. It fails the test when the
// conflist is invalid or one of its plugins (IPAM included) is not built.
// libcni's cache lives in the node's Dir. Bridges of bridge plugins are
// created up front (see AddBridge).
func (n *Node) Network(t testing.TB, conflist []byte) *Network {
	t.Helper()
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		t.Fatalf("parsing conflist: %v\n%s", err, conflist)
	}
	for _, plugin := range pluginTypes(list) {
		PluginPath(t, plugin)
	}
	for _, bridge := range bridgeNames(list) {
		if err := n.AddBridge(bridge); err != nil {
			t.Fatal(err)
		}
	}
	cacheDir := filepath.Join(n.Dir, "cni-cache")
	exec := &nodeExec{netns: n.netns, DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}}
	network := &Network{
		Name:     list.Name,
		Config:   list,
		CNI:      libcni.NewCNIConfigWithCacheDir(n.cniPath, cacheDir, exec),
		attached: map[types.GCAttachment]*Pod{},
	}
	if err := n.register(func() { n.networks = append(n.networks, network) }); err != nil {
		t.Fatal(err)
	}
	return network
}

// Add attaches the pod (CNI ADD of every plugin in the list).
func (nw *Network) Add(ctx context.Context, pod *Pod) (types.Result, error) {
	nw.mu.Lock()
	nw.attached[pod.Attachment()] = pod // a failed ADD is cleaned with DEL too, as runtimes do
	nw.mu.Unlock()
	return nw.CNI.AddNetworkList(ctx, nw.Config, pod.RuntimeConf())
}

// Check runs CNI CHECK for the pod, with the cached ADD result as prevResult.
func (nw *Network) Check(ctx context.Context, pod *Pod) error {
	return nw.CNI.CheckNetworkList(ctx, nw.Config, pod.RuntimeConf())
}

// Del detaches the pod (CNI DEL, in reverse plugin order).
func (nw *Network) Del(ctx context.Context, pod *Pod) error {
	if err := nw.CNI.DelNetworkList(ctx, nw.Config, pod.RuntimeConf()); err != nil {
		return err
	}
	nw.mu.Lock()
	delete(nw.attached, pod.Attachment())
	nw.mu.Unlock()
	return nil
}

// GC runs CNI GC with the given pods as cni.dev/valid-attachments: libcni
// DELs cached attachments of other pods, then sends GC to every plugin.
// (The reference bridge and ptp plugins do nothing on GC and do not pass it
// to their IPAM; use Node.InvokePlugin to GC an IPAM plugin directly.)
func (nw *Network) GC(ctx context.Context, valid ...*Pod) error {
	args := &libcni.GCArgs{ValidAttachments: ValidAttachments(valid...)}
	if err := nw.CNI.GCNetworkList(ctx, nw.Config, args); err != nil {
		return err
	}
	keep := map[types.GCAttachment]bool{}
	for _, a := range args.ValidAttachments {
		keep[a] = true
	}
	nw.mu.Lock()
	for a := range nw.attached {
		if !keep[a] {
			delete(nw.attached, a)
		}
	}
	nw.mu.Unlock()
	return nil
}

// Status runs CNI STATUS on every plugin of the list.
func (nw *Network) Status(ctx context.Context) error {
	return nw.CNI.GetStatusNetworkList(ctx, nw.Config)
}

// CachedResult returns the result libcni cached at the pod's ADD.
func (nw *Network) CachedResult(pod *Pod) (types.Result, error) {
	return nw.CNI.GetNetworkListCachedResult(nw.Config, pod.RuntimeConf())
}

// deleteAll DELs every attachment still up, a few at a time.
func (nw *Network) deleteAll(ctx context.Context) []error {
	nw.mu.Lock()
	pods := make([]*Pod, 0, len(nw.attached))
	for _, pod := range nw.attached {
		pods = append(pods, pod)
	}
	nw.mu.Unlock()

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 8)
	)
	for _, pod := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := nw.Del(ctx, pod); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("CNI DEL of %s/%s on %s: %w", pod.Namespace, pod.Name, nw.Name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// ValidAttachments lists the pods' attachments for cni.dev/valid-attachments.
func ValidAttachments(pods ...*Pod) []types.GCAttachment {
	out := make([]types.GCAttachment, 0, len(pods))
	for _, pod := range pods {
		out = append(out, pod.Attachment())
	}
	return out
}

// nodeExec runs every plugin binary libcni invokes inside the node
// namespace, each on its own locked thread, so concurrent calls are safe.
type nodeExec struct {
	*invoke.DefaultExec
	netns ns.NetNS
}

func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout []byte
	err := e.netns.Do(func(ns.NetNS) error {
		var err error
		stdout, err = e.RawExec.ExecPlugin(ctx, pluginPath, stdin, environ)
		return err
	})
	return stdout, err
}

// pluginTypes lists the plugin types a conflist needs, IPAM plugins included.
func pluginTypes(list *libcni.NetworkConfigList) []string {
	var out []string
	for _, plugin := range list.Plugins {
		out = append(out, plugin.Network.Type)
		var conf struct {
			IPAM struct {
				Type string `json:"type"`
			} `json:"ipam"`
		}
		if json.Unmarshal(plugin.Bytes, &conf) == nil && conf.IPAM.Type != "" {
			out = append(out, conf.IPAM.Type)
		}
	}
	return out
}
