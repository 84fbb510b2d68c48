package realm

import (
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// After the runtime started (TestMain, with PYTHONFAULTHANDLER=1 in the environment), Go still
// owns its signals: a SIGINT handler receives SIGINT, and a nil dereference is a Go panic.
func TestSignals(t *testing.T) {
	if _, err := testModel.Tokenize("warm", 0); err != nil { // Python is running
		t.Fatal(err)
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT)
	defer signal.Stop(ch)
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case sig := <-ch:
		if sig != syscall.SIGINT {
			t.Fatalf("received %v", sig)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the Go SIGINT handler did not receive SIGINT")
	}

	recovered := func() (r any) {
		defer func() { r = recover() }()
		var p *int
		return *p
	}()
	if err, ok := recovered.(error); !ok || !strings.Contains(err.Error(), "nil pointer dereference") {
		t.Fatalf("a nil dereference gave %v, want a recovered Go runtime error", recovered)
	}
}

const childEnv = "REALM_GO_TEST_CHILD"

// A runtime that cannot start is ErrInit with the reason, for Init and every later call, and
// the process goes on.  Runs in a child process: start-up happens once per process.
func TestInitFailure(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestInitFailureChild$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1", "REALM_PYTHON=/nonexistent/bin/python")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestInitFailureChild") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestInitFailureChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("runs as a child of TestInitFailure")
	}
	const reason = "REALM_PYTHON=/nonexistent/bin/python is not an executable file"
	err := Init()
	checkErr(t, err, CodeInit, "realm_init: the runtime failed to start: "+reason)
	_, err = StoreDefaultModel(0)
	checkErr(t, err, CodeInit, "realm_model_store_default: the runtime failed to start: "+reason)
	if ABIVersion() != BindingABIVersion || Version() == "" { // these never need Python
		t.Error("ABIVersion/Version failed without a runtime")
	}
}
