// Command bench measures the Go binding: decode speed (prefill 128 tokens, then 64 greedy
// single-token decodes) and the per-call overhead of a pure C call (realm_abi_version) against
// calls that go into Python (session n_tokens, tokenize).  The Python API's numbers for the same
// work, measured in the same run (a child process, one torch thread like the library), are the
// anchor: the table prints Go / Python ratios.  -precision picks both paths' decode sessions:
// fast decodes ~10x faster, so the binding's per-token cost weighs ~10x more there.  Prints a
// table, then one JSON line.
//
//	cd bindings/go && PKG_CONFIG_PATH=$(../../.venv/bin/python -m realm_embed config --pkgconfigdir) \
//	    go run ./cmd/bench [-reps 3] [-prefill 128] [-decode 64] [-precision exact|fast] [-json out.json]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"realm.dev/realm"
)

// The same measurements through the Python API, printed as JSON.
const pythonBench = `
import json, os, statistics, sys, time
import torch
torch.set_num_threads(int(os.environ.get("REALM_TORCH_THREADS", "1")))
import realm_embed as realm
prefill, n_decode, reps, calls = map(int, sys.argv[1:5])
precision = sys.argv[5]
mid = realm.store_model()
ids = realm.tokenize(mid, "The history of the city is long and full of surprises. " * 40)[:prefill]
def run(ids, n):
    s = realm.create_session(mid, len(ids) + n + 1, precision=precision)
    t0 = time.perf_counter(); logits = realm.decode(s, ids); t1 = time.perf_counter()
    tok = int(logits.argmax())
    for _ in range(n):
        tok = int(realm.decode(s, [tok]).argmax())
    t2 = time.perf_counter()
    realm.session_free(s)
    return len(ids) / (t1 - t0), n / (t2 - t1)
run(ids[:8], 2)
runs = [run(ids, n_decode) for _ in range(reps)]
s = realm.create_session(mid, 8)
def per_call(f, n):
    t0 = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t0) / n * 1e6
out = {"prefill_tok_s": [r[0] for r in runs], "decode_tok_s": [r[1] for r in runs],
       "n_tokens_us": per_call(lambda: s.n_tokens, calls), "tokenize_us": per_call(lambda: realm.tokenize(mid, "Hi"), calls)}
print(json.dumps(out))
`

type row struct {
	Metric string  `json:"metric"`
	Unit   string  `json:"unit"`
	Go     float64 `json:"go"`
	GoMin  float64 `json:"go_min"`
	GoMax  float64 `json:"go_max"`
	Python float64 `json:"python,omitempty"`
}

func median(x []float64) (med, lo, hi float64) {
	s := append([]float64(nil), x...)
	sort.Float64s(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

func perCall(n int, f func()) float64 {
	t0 := time.Now()
	for i := 0; i < n; i++ {
		f()
	}
	return float64(time.Since(t0).Nanoseconds()) / float64(n) / 1e3
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
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

func main() {
	reps := flag.Int("reps", 3, "repetitions of the decode run (the median is reported)")
	prefill := flag.Int("prefill", 128, "prompt tokens")
	nDecode := flag.Int("decode", 64, "generated tokens (one Decode call each)")
	calls := flag.Int("calls", 20000, "calls per per-call measurement (into Python)")
	python := flag.String("python", "", "the venv's python for the anchor (default ../../.venv/bin/python; \"none\" skips it)")
	jsonOut := flag.String("json", "", "also write the JSON to this file")
	precisionName := flag.String("precision", "exact", "the decode sessions' precision, both paths: exact or fast")
	flag.Parse()
	precisions := map[string]realm.Precision{"exact": realm.PrecisionExact, "fast": realm.PrecisionFast}
	precision, ok := precisions[*precisionName]
	if !ok {
		log.Fatalf("-precision must be exact or fast, got %q", *precisionName)
	}

	t0 := time.Now()
	check(realm.Init())
	initMs := float64(time.Since(t0).Microseconds()) / 1e3
	t0 = time.Now()
	m, err := realm.StoreDefaultModel(0)
	check(err)
	defer m.Close()
	storeMs := float64(time.Since(t0).Microseconds()) / 1e3

	ids, err := m.Tokenize(strings.Repeat("The history of the city is long and full of surprises. ", 40), realm.TokenizeDefault)
	check(err)
	ids = ids[:*prefill]
	run := func(ids []int32, n int) (float64, float64) {
		s, err := m.NewSessionWith(realm.SessionOptions{NCtx: len(ids) + n + 1, Precision: precision})
		check(err)
		defer s.Close()
		t0 := time.Now()
		logits, err := s.Decode(ids)
		check(err)
		t1 := time.Now()
		tok := argmax(logits)
		for i := 0; i < n; i++ {
			logits, err = s.Decode([]int32{tok})
			check(err)
			tok = argmax(logits)
		}
		t2 := time.Now()
		return float64(len(ids)) / t1.Sub(t0).Seconds(), float64(n) / t2.Sub(t1).Seconds()
	}
	run(ids[:8], 2) // warm-up: the first decode dequantizes the weights
	var pre, dec []float64
	for i := 0; i < *reps; i++ {
		p, d := run(ids, *nDecode)
		pre, dec = append(pre, p), append(dec, d)
	}

	s, err := m.NewSession(8)
	check(err)
	defer s.Close()
	abiUs := perCall(1000000, func() { realm.ABIVersion() })
	nTokUs := perCall(*calls, func() { _, _ = s.NTokens() })
	tokUs := perCall(*calls, func() { _, _ = m.Tokenize("Hi", realm.TokenizeDefault) })

	// The Python anchor, after the Go runs so that the two do not share the CPUs.
	var py struct {
		Prefill  []float64 `json:"prefill_tok_s"`
		Decode   []float64 `json:"decode_tok_s"`
		NTokUs   float64   `json:"n_tokens_us"`
		Tokenize float64   `json:"tokenize_us"`
	}
	pyPath := *python
	if pyPath == "" {
		pyPath, _ = filepath.Abs(filepath.Join("..", "..", ".venv", "bin", "python"))
	}
	if pyPath != "none" {
		out, err := exec.Command(pyPath, "-c", pythonBench, fmt.Sprint(*prefill), fmt.Sprint(*nDecode),
			fmt.Sprint(*reps), fmt.Sprint(*calls), *precisionName).Output()
		if err != nil {
			log.Fatalf("the Python anchor (%s; -python none skips it): %v", pyPath, err)
		}
		check(json.Unmarshal(out, &py))
	}

	rows := []row{}
	add := func(metric, unit string, goVals []float64, pyVal float64) {
		med, lo, hi := median(goVals)
		rows = append(rows, row{metric, unit, med, lo, hi, pyVal})
	}
	pyMed := func(x []float64) float64 {
		if len(x) == 0 {
			return 0
		}
		m, _, _ := median(x)
		return m
	}
	add(fmt.Sprintf("prefill %d", *prefill), "tok/s", pre, pyMed(py.Prefill))
	add(fmt.Sprintf("decode %d", *nDecode), "tok/s", dec, pyMed(py.Decode))
	add("realm_abi_version (C only)", "us/call", []float64{abiUs}, 0)
	add("session n_tokens (into Python)", "us/call", []float64{nTokUs}, py.NTokUs)
	add("tokenize \"Hi\" (into Python)", "us/call", []float64{tokUs}, py.Tokenize)

	fmt.Printf("Go binding, %s, librealm %s (%s); precision %s; init %.0f ms, model store %.0f ms\n",
		strings.TrimSpace(goVersion()), realm.Version(), realm.LibraryPath(), *precisionName, initMs, storeMs)
	fmt.Printf("%-32s %-8s %10s %19s %10s %8s\n", "metric", "unit", "go", "go spread", "python", "go/py")
	for _, r := range rows {
		ratio, pyText := "", "-"
		if r.Python > 0 {
			ratio, pyText = fmt.Sprintf("%.2f", r.Go/r.Python), fmt.Sprintf("%.2f", r.Python)
		}
		fmt.Printf("%-32s %-8s %10.3f %9.3f..%-9.3f %10s %8s\n", r.Metric, r.Unit, r.Go, r.GoMin, r.GoMax, pyText, ratio)
	}
	blob, _ := json.Marshal(map[string]any{"binding": "go", "precision": *precisionName, "init_ms": initMs, "store_ms": storeMs, "rows": rows})
	fmt.Println(string(blob))
	if *jsonOut != "" {
		check(os.WriteFile(*jsonOut, blob, 0o644))
	}
}

func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "go"
	}
	return string(out)
}
