// Package installtest runs install.sh the way the DaemonSet's init container
// and an admin do, against scratch CNI directories, and its uninstall's
// kernel part only inside node namespaces the tests create.
package installtest

import (
	"testing"

	"github.com/podwall/podwall/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
