package realm

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The tests share one model (the embedded default) and compare every result with what the
// Python API of the same runtime computes (testdata/expected.py, run once per test binary).

var testModel *Model

// expected is the JSON that testdata/expected.py prints.
type expected struct {
	Version      string         `json:"version"`
	Info         map[string]any `json:"info"`
	InfoJSONKeys []string       `json:"info_json_keys"`
	TensorNames  []string       `json:"tensor_names"`
	Tensors      map[string]struct {
		Shape  []int     `json:"shape"`
		Type   uint32    `json:"type"`
		NBytes uint64    `json:"nbytes"`
		SHA256 string    `json:"sha256"`
		First  []float32 `json:"first"`
	} `json:"tensors"`
	Tokenize []struct {
		Text  string  `json:"text"`
		Flags uint32  `json:"flags"`
		IDs   []int32 `json:"ids"`
	} `json:"tokenize"`
	Detokenize struct {
		IDs  []int32 `json:"ids"`
		Text string  `json:"text"`
	} `json:"detokenize"`
	Pieces map[string]string `json:"pieces"`
	Chat   struct {
		Messages []struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"messages"`
		Gen   string `json:"gen"`
		NoGen string `json:"nogen"`
	} `json:"chat"`
	Prompt     []int32 `json:"prompt"`
	Embed      string  `json:"embed"`
	Layer0     string  `json:"layer0"`
	HiddenLast string  `json:"hidden_last"`
	LogitsAll  string  `json:"logits_all"`
	DecodeLast string  `json:"decode_last"`
	Next       int32   `json:"next"`
	DecodeNext string  `json:"decode_next"`
	DecodeAll  string  `json:"decode_all"`
	DecodeFast string  `json:"decode_fast"`
	TopK       struct {
		Values []float32 `json:"values"`
		IDs    []int32   `json:"ids"`
	} `json:"topk"`
	Sampled    []int32 `json:"sampled"`
	ChatPrompt string  `json:"chat_prompt"`
	Generate   []struct {
		Case struct {
			MaxTokens int      `json:"max_tokens"`
			Stop      []string `json:"stop"`
			Sampler   *struct {
				Temperature       float64 `json:"temperature"`
				TopK              int     `json:"top_k"`
				TopP              float64 `json:"top_p"`
				MinP              float64 `json:"min_p"`
				RepetitionPenalty float64 `json:"repetition_penalty"`
				Seed              uint64  `json:"seed"`
			} `json:"sampler"`
		} `json:"case"`
		Text         string  `json:"text"`
		Tokens       []int32 `json:"tokens"`
		Finish       string  `json:"finish"`
		NPrompt      int     `json:"n_prompt"`
		NTokensAfter int     `json:"n_tokens_after"`
	} `json:"generate"`
}

var (
	wantVal  *expected
	wantErr  error
	wantDone = make(chan struct{})
)

// pythonPath is the interpreter of the environment holding realm_embed: $REALM_TEST_PYTHON, or
// the source tree's .venv.
func pythonPath() string {
	if p := os.Getenv("REALM_TEST_PYTHON"); p != "" {
		return p
	}
	p, _ := filepath.Abs(filepath.Join("..", "..", ".venv", "bin", "python"))
	return p
}

func runExpected() {
	defer close(wantDone)
	py := pythonPath()
	cmd := exec.Command(py, filepath.Join("testdata", "expected.py"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		wantErr = fmt.Errorf("running %s testdata/expected.py (set REALM_TEST_PYTHON to the venv's python): %v\n%s",
			py, err, stderr.String())
		return
	}
	wantVal = new(expected)
	if err := json.Unmarshal(out, wantVal); err != nil {
		wantErr = fmt.Errorf("testdata/expected.py printed bad JSON: %v", err)
	}
}

// want returns the Python results, waiting for the helper started by TestMain.
func want(t testing.TB) *expected {
	t.Helper()
	<-wantDone
	if wantErr != nil {
		t.Fatal(wantErr)
	}
	return wantVal
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" { // a re-executed child of TestInitFailure: no start-up here
		os.Exit(m.Run())
	}
	// Python must ignore PYTHON* variables: with faulthandler installed, a Go nil dereference
	// would become a fatal "Segmentation fault" (TestSignals checks it stays a Go panic).
	os.Setenv("PYTHONFAULTHANDLER", "1")
	go runExpected() // the Python helper runs while the runtime starts here
	if err := Init(); err != nil {
		fmt.Fprintln(os.Stderr, "realm.Init:", err)
		os.Exit(1)
	}
	var err error
	if testModel, err = StoreDefaultModel(0); err != nil {
		fmt.Fprintln(os.Stderr, "realm.StoreDefaultModel:", err)
		os.Exit(1)
	}
	code := m.Run()
	<-wantDone
	if err := testModel.Close(); err != nil && code == 0 {
		fmt.Fprintln(os.Stderr, "closing the test model:", err)
		code = 1
	}
	os.Exit(code)
}

// f32 decodes base64 little-endian float32.
func f32(t testing.TB, b64 string) []float32 {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, len(raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out
}

// sameBits fails unless got and want are equal bit for bit.
func sameBits(t testing.TB, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d floats, Python has %d", what, len(got), len(want))
	}
	diff, first, maxAbs := 0, -1, 0.0
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			if first < 0 {
				first = i
			}
			diff++
			maxAbs = math.Max(maxAbs, math.Abs(float64(got[i])-float64(want[i])))
		}
	}
	if diff > 0 {
		t.Fatalf("%s: %d of %d floats differ from Python (first at %d: %g vs %g; max |diff| %g)",
			what, diff, len(got), first, got[first], want[first], maxAbs)
	}
}

// close enough: for results computed by a different but equivalent path (chunked decode).
func near(t testing.TB, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d floats, want %d", what, len(got), len(want))
	}
	for i := range got {
		if d := math.Abs(float64(got[i]) - float64(want[i])); d > tol {
			t.Fatalf("%s: index %d: %g vs %g (|diff| %g > %g)", what, i, got[i], want[i], d, tol)
		}
	}
}

func argmax(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

// must returns v, or panics (failing the test binary with a stack trace) on an unexpected error.
func must[T any](v T, err error) T {
	if err != nil {
		panic(fmt.Sprintf("unexpected error: %v", err))
	}
	return v
}

func must2[A, B any](a A, b B, err error) (A, B) {
	if err != nil {
		panic(fmt.Sprintf("unexpected error: %v", err))
	}
	return a, b
}

func session(t testing.TB, nCtx int) *Session {
	t.Helper()
	s := must(testModel.NewSession(nCtx))
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}
