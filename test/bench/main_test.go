// Package bench holds podwall's benchmarks. Each prints its figures next to a
// baseline measured in the same run, as ratios; none is a timed assertion.
package bench

import (
	"testing"

	"github.com/podwall/podwall/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
