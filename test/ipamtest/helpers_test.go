// Package ipamtest drives podwall-ipam through real main plugins on a real
// kernel, the way a container runtime does.
package ipamtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podwall/podwall/test/harness"
)

// ipamConf is a podwall-ipam section; the zero fields are left out.
type ipamConf struct {
	Type         string      `json:"type"`
	Ranges       []rangeConf `json:"ranges"`
	Exclude      []string    `json:"exclude,omitempty"`
	ServiceCIDRs []string    `json:"serviceCIDRs,omitempty"`
	DataDir      string      `json:"dataDir"`
}

type rangeConf struct {
	Subnet   string `json:"subnet"`
	Gateway  string `json:"gateway,omitempty"`
	Draining bool   `json:"draining,omitempty"`
}

func (c ipamConf) JSON(t testing.TB) []byte {
	t.Helper()
	c.Type = "podwall-ipam"
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// addAll creates n pods and attaches them concurrently (at most parallel at a
// time, 0 meaning all at once). It returns the pods and each one's addresses.
func addAll(t *testing.T, node *harness.Node, nw *harness.Network, prefix string, n, parallel int) ([]*harness.Pod, [][]netip.Prefix) {
	t.Helper()
	pods := make([]*harness.Pod, n)
	for i := range pods {
		pods[i] = node.NewPod(t, "default", fmt.Sprintf("%s-%d", prefix, i))
	}
	ips := make([][]netip.Prefix, n)
	errs := make([]error, n)
	if parallel <= 0 {
		parallel = n
	}
	sem := make(chan struct{}, parallel)
	ctx := ctxFor(t, 5*time.Minute)
	var wg sync.WaitGroup
	for i, pod := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res, err := nw.Add(ctx, pod)
			if err == nil {
				ips[i], err = harness.ResultIPs(res)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	return pods, ips
}

// reservations lists the addresses reserved in a network's data dir.
func reservations(t testing.TB, dataDir, network string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dataDir, network, "ips"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// cniCode extracts the CNI error code of a libcni or harness error, 0 if none.
func cniCode(err error) uint {
	var perr *harness.PluginError
	if errors.As(err, &perr) && perr.CNI != nil {
		return perr.CNI.Code
	}
	var terr *types.Error
	if errors.As(err, &terr) {
		return terr.Code
	}
	return 0
}

// delAll detaches pods concurrently, 16 at a time.
func delAll(t *testing.T, nw *harness.Network, pods []*harness.Pod) {
	t.Helper()
	ctx := ctxFor(t, 5*time.Minute)
	errs := make([]error, len(pods))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, pod := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = nw.Del(ctx, pod)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}
