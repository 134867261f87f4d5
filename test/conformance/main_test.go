// Package conformance_test replays cyclonus' generated NetworkPolicy test
// cases on real pods behind the chain bridge + podwall-ipam + podwall, with
// the real podwall-agent enforcing a policy directory, and compares what
// real packets do with cyclonus' matcher.
package conformance_test

import (
	"testing"

	"github.com/podwall/podwall/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
