package harness

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// ResultIPs returns the addresses of a CNI result (any version), with their
// prefix lengths.
func ResultIPs(result types.Result) ([]netip.Prefix, error) {
	res, err := current.NewResultFromResult(result)
	if err != nil {
		return nil, fmt.Errorf("converting CNI result: %w", err)
	}
	out := make([]netip.Prefix, 0, len(res.IPs))
	for _, ip := range res.IPs {
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			return nil, fmt.Errorf("bad address %v in CNI result", ip.Address.IP)
		}
		ones, _ := ip.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
	}
	return out, nil
}
