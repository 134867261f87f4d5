package ipamtest

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podwall/podwall/test/harness"
)

// A route added to the node while pods are being attached removes its
// addresses from what is handed out from then on, with no restart.
func TestForeignRouteAddedMidRun(t *testing.T) {
	for _, main := range []string{"bridge", "ptp"} {
		t.Run(main, func(t *testing.T) {
			node := harness.NewNode(t)
			if err := node.AddUplink("corp0"); err != nil {
				t.Fatal(err)
			}
			dataDir := node.Dir + "/ipam"
			conf := ipamConf{Ranges: []rangeConf{{Subnet: "100.64.8.0/23"}}, DataDir: dataDir}
			conflist := harness.BridgeConflist("podnet", "cni0", conf.JSON(t))
			if main == "ptp" {
				conflist = harness.PTPConflist("podnet", conf.JSON(t))
			}
			nw := node.Network(t, conflist)

			const total, before = 120, 40
			corporate := netip.MustParsePrefix("100.64.8.64/26")
			pods := make([]*harness.Pod, total)
			for i := range pods {
				pods[i] = node.NewPod(t, "default", fmt.Sprintf("p%d", i))
			}
			var routeAdded atomic.Bool
			startedAfter := make([]bool, total)
			got := make([]netip.Addr, total)
			errs := make([]error, total)
			ctx := ctxFor(t, 5*time.Minute)
			var wg sync.WaitGroup
			var done atomic.Int32
			sem := make(chan struct{}, 8)
			for i, pod := range pods {
				if i == before {
					// Mid-run: earlier ADDs may still be in flight.
					for done.Load() < before/2 {
						time.Sleep(time.Millisecond)
					}
					if err := node.AddRoute(corporate.String(), "dev", "corp0"); err != nil {
						t.Fatal(err)
					}
					routeAdded.Store(true)
				}
				wg.Add(1)
				sem <- struct{}{}
				startedAfter[i] = routeAdded.Load()
				go func() {
					defer wg.Done()
					defer func() { <-sem; done.Add(1) }()
					res, err := nw.Add(ctx, pod)
					if err == nil {
						var ips []netip.Prefix
						ips, err = harness.ResultIPs(res)
						if err == nil {
							got[i] = ips[0].Addr()
						}
					}
					errs[i] = err
				}()
			}
			wg.Wait()
			inside, beyond := 0, 0
			for i := range pods {
				if errs[i] != nil {
					t.Fatalf("ADD %d: %v", i, errs[i])
				}
				if got[i].Compare(corporate.Addr()) > 0 && !corporate.Contains(got[i]) {
					beyond++
				}
				if !corporate.Contains(got[i]) {
					continue
				}
				inside++
				if startedAfter[i] {
					t.Errorf("pod %d, attached after the route to %s was added, got %s", i, corporate, got[i])
				}
			}
			t.Logf("%d pods; %d got addresses inside %s before the route existed", total, inside, corporate)
			if beyond == 0 {
				t.Errorf("no address beyond %s was handed out: the test never reached the route", corporate)
			}
		})
	}
}
