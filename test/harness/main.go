package harness

import (
	"fmt"
	"os"
	"testing"
)

// Main runs a package's tests, then fails the run if a namespace the harness
// mounted in this process is still there. Use it as
//
//	func TestMain(m *testing.M) { harness.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	names, err := ownNetNSNames()
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "harness: checking for leaked namespaces: %v\n", err)
		code = max(code, 1)
	case len(names) > 0:
		fmt.Fprintf(os.Stderr, "harness: namespaces left behind in %s: %v\n", netnsDir, names)
		code = max(code, 1)
	}
	os.Exit(code)
}
