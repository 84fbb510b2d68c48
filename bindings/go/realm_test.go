package realm

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Every call of the binding against the Python API's result for the same input.

func TestVersion(t *testing.T) {
	w := want(t)
	if Version() != w.Version {
		t.Errorf("Version() = %q, Python package %q", Version(), w.Version)
	}
	if ABIVersion() != BindingABIVersion {
		t.Errorf("ABIVersion() = %d, binding %d", ABIVersion(), BindingABIVersion)
	}
	parts := strings.Split(w.Version, ".")
	maj, _ := strconv.Atoi(parts[0])
	min, _ := strconv.Atoi(parts[1])
	pat, _ := strconv.Atoi(parts[2])
	if VersionNumber() != maj*1000000+min*1000+pat {
		t.Errorf("VersionNumber() = %d for %s", VersionNumber(), w.Version)
	}
	if !strings.HasSuffix(LibraryPath(), "/librealm.so") {
		t.Errorf("LibraryPath() = %q", LibraryPath())
	}
	if err := Init(); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestInfo(t *testing.T) {
	w := want(t).Info
	info := must(testModel.Info())
	num := func(k string) float64 { return w[k].(float64) }
	// The id is a uint64 that JSON numbers (float64) cannot hold exactly: compare as text.
	idJSON := must(testModel.InfoJSON())
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(idJSON), &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw["id"]) != strconv.FormatUint(info.ID, 10) || info.ID != testModel.ID() {
		t.Errorf("ID %d, InfoJSON id %s, Model.ID %d", info.ID, raw["id"], testModel.ID())
	}
	got := map[string]float64{
		"n_layer": float64(info.NLayer), "n_embd": float64(info.NEmbd), "n_ff": float64(info.NFF),
		"n_head": float64(info.NHead), "n_head_kv": float64(info.NHeadKV), "head_dim": float64(info.HeadDim),
		"n_rot": float64(info.NRot), "n_vocab": float64(info.NVocab), "n_ctx_train": float64(info.NCtxTrain),
		"n_tensors": float64(info.NTensors), "bos_id": float64(info.BOSID), "eos_id": float64(info.EOSID),
		"rope_freq_base": info.RopeFreqBase, "rms_eps": info.RMSEps, "total_bytes": float64(info.TotalBytes),
	}
	for k, v := range got {
		if v != num(k) {
			t.Errorf("Info %s = %v, Python %v", k, v, num(k))
		}
	}
	if info.Architecture != w["architecture"] || info.Name != w["name"] || info.HasChatTemplate != w["has_chat_template"] {
		t.Errorf("Info strings %q %q %v, Python %v %v %v", info.Architecture, info.Name, info.HasChatTemplate,
			w["architecture"], w["name"], w["has_chat_template"])
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if !reflect.DeepEqual(keys, want(t).InfoJSONKeys) {
		t.Errorf("InfoJSON keys %v, Python %v", keys, want(t).InfoJSONKeys)
	}
}

func TestTensors(t *testing.T) {
	w := want(t)
	names := must(testModel.TensorNames())
	if !reflect.DeepEqual(names, w.TensorNames) {
		t.Fatalf("TensorNames: %d names, Python %d (first %v vs %v)", len(names), len(w.TensorNames), names[:3], w.TensorNames[:3])
	}
	for name, wt := range w.Tensors {
		data, shape, err := testModel.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		ti := must(testModel.TensorInfo(name))
		if !reflect.DeepEqual(shape, wt.Shape) || !reflect.DeepEqual(ti.Shape, wt.Shape) || ti.GGMLType != wt.Type ||
			ti.NBytes != wt.NBytes || ti.NElements != len(data) {
			t.Errorf("%s: shape %v / info %+v, Python shape %v type %d nbytes %d", name, shape, ti, wt.Shape, wt.Type, wt.NBytes)
		}
		raw := make([]byte, 4*len(data))
		for i, v := range data {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
		sum := sha256.Sum256(raw)
		if hex.EncodeToString(sum[:]) != wt.SHA256 {
			t.Errorf("%s: float32 data differs from Python (first %v vs %v)", name, data[:8], wt.First)
		}
	}
}

func TestTokenize(t *testing.T) {
	for _, c := range want(t).Tokenize {
		ids := must(testModel.Tokenize(c.Text, TokenizeFlags(c.Flags)))
		if len(ids) != len(c.IDs) || (len(ids) > 0 && !reflect.DeepEqual(ids, c.IDs)) {
			t.Errorf("Tokenize(%q, %d) = %v, Python %v", c.Text, c.Flags, ids, c.IDs)
		}
	}
	// A text longer than the first guess of the two-call protocol is not needed: the guess is
	// one token per byte.  A long text still round-trips.
	long := strings.Repeat("Paris is the capital of France. ", 200)
	ids := must(testModel.Tokenize(long, 0))
	if back := must(testModel.Detokenize(ids)); back != long {
		t.Errorf("long text does not round-trip: %d tokens -> %d bytes", len(ids), len(back))
	}
}

func TestDetokenizeAndPieces(t *testing.T) {
	w := want(t)
	if got := must(testModel.Detokenize(w.Detokenize.IDs)); got != w.Detokenize.Text {
		t.Errorf("Detokenize = %q, Python %q", got, w.Detokenize.Text)
	}
	if got := must(testModel.Detokenize(nil)); got != "" {
		t.Errorf("Detokenize(nil) = %q", got)
	}
	for k, b64 := range w.Pieces {
		id, _ := strconv.Atoi(k)
		wantPiece, _ := base64.StdEncoding.DecodeString(b64)
		if got := must(testModel.TokenPiece(int32(id))); string(got) != string(wantPiece) {
			t.Errorf("TokenPiece(%d) = %q, Python %q", id, got, wantPiece)
		}
	}
}

func TestChatTemplate(t *testing.T) {
	w := want(t).Chat
	msgs := make([]Message, len(w.Messages))
	for i, m := range w.Messages {
		msgs[i] = Message{Role: m.Role, Content: m.Content}
	}
	if got := must(testModel.ApplyChatTemplate(msgs, true)); got != w.Gen {
		t.Errorf("ApplyChatTemplate(gen) = %q, Python %q", got, w.Gen)
	}
	if got := must(testModel.ApplyChatTemplate(msgs, false)); got != w.NoGen {
		t.Errorf("ApplyChatTemplate(nogen) = %q, Python %q", got, w.NoGen)
	}
	js := must(json.Marshal(w.Messages))
	if got := must(testModel.ApplyChatTemplateJSON(string(js), true)); got != w.Gen {
		t.Errorf("ApplyChatTemplateJSON = %q, Python %q", got, w.Gen)
	}
}

func TestLayerLoop(t *testing.T) {
	w := want(t)
	s := session(t, 64)
	h := must(s.EmbedTokens(w.Prompt))
	sameBits(t, "EmbedTokens", h, f32(t, w.Embed))
	for layer := 0; layer < testModel.dims.NLayer; layer++ {
		h = must(s.ForwardLayer(layer, 0, h))
		if layer == 0 {
			sameBits(t, "ForwardLayer(0)", h, f32(t, w.Layer0))
		}
	}
	sameBits(t, "hidden after the last layer", h, f32(t, w.HiddenLast))
	sameBits(t, "ComputeLogits", must(s.ComputeLogits(h)), f32(t, w.LogitsAll))
	if n := must(s.NTokens()); n != len(w.Prompt) {
		t.Errorf("NTokens after the layer loop = %d, want %d", n, len(w.Prompt))
	}
	if n := must(s.NCtx()); n != 64 {
		t.Errorf("NCtx = %d", n)
	}
	if s.Model() != testModel || must(s.ModelID()) != testModel.ID() {
		t.Error("Session.Model / ModelID is not the model it was created on")
	}
}

func TestDecodeForkTruncateReset(t *testing.T) {
	w := want(t)
	s := session(t, 64)
	last := must(s.Decode(w.Prompt))
	sameBits(t, "Decode", last, f32(t, w.DecodeLast))
	if argmax(last) != w.Next {
		t.Fatalf("argmax %d, Python %d", argmax(last), w.Next)
	}
	f := must(s.Fork())
	defer f.Close()
	sameBits(t, "Decode(next)", must(s.Decode([]int32{w.Next})), f32(t, w.DecodeNext))
	sameBits(t, "Decode(next) on the fork", must(f.Decode([]int32{w.Next})), f32(t, w.DecodeNext))
	if n := must(f.NTokens()); n != len(w.Prompt)+1 {
		t.Errorf("fork NTokens = %d", n)
	}

	// Truncate back into the prompt and decode its tail again: the same logits up to chunking.
	k := len(w.Prompt) - 2
	if err := s.Truncate(k); err != nil {
		t.Fatal(err)
	}
	near(t, "Decode after Truncate", must(s.Decode(w.Prompt[k:])), f32(t, w.DecodeLast), 1e-3)

	if err := s.Reset(); err != nil {
		t.Fatal(err)
	}
	if n := must(s.NTokens()); n != 0 {
		t.Fatalf("NTokens after Reset = %d", n)
	}
	sameBits(t, "DecodeAll", must(s.DecodeAll(w.Prompt)), f32(t, w.DecodeAll))
}

func TestNewSessionWithPrecision(t *testing.T) {
	w := want(t)
	s := must(testModel.NewSessionWith(SessionOptions{NCtx: 64, Precision: PrecisionFast, Device: "cpu"}))
	defer s.Close()
	if n := must(s.NCtx()); n != 64 {
		t.Errorf("NCtx = %d", n)
	}
	sameBits(t, "Decode (fast)", must(s.Decode(w.Prompt)), f32(t, w.DecodeFast))

	e := must(testModel.NewSessionWith(SessionOptions{})) // the zero value: exact, cpu
	defer e.Close()
	sameBits(t, "Decode (exact)", must(e.Decode(w.Prompt)), f32(t, w.DecodeLast))

	_, err := testModel.NewSessionWith(SessionOptions{Precision: Precision(7)})
	checkErr(t, err, CodeArg, "realm_session_create_ex: params->precision is 7")
	_, err = testModel.NewSessionWith(SessionOptions{Device: "tpu"})
	checkErr(t, err, CodeArg, "'tpu'")
	_, err = testModel.NewSessionWith(SessionOptions{NCtx: -1})
	checkErr(t, err, CodeArg, "Model.NewSessionWith: NCtx -1")
}

func TestTopKAndSampler(t *testing.T) {
	w := want(t)
	last := f32(t, w.DecodeLast)
	vals, ids := must2(TopK(last, 5))
	if !reflect.DeepEqual(ids, w.TopK.IDs) || !reflect.DeepEqual(vals, w.TopK.Values) {
		t.Errorf("TopK = %v %v, Python %v %v", vals, ids, w.TopK.Values, w.TopK.IDs)
	}
	if v, i := must2(TopK([]float32{1, 3, 2}, 10)); !reflect.DeepEqual(i, []int32{1, 2, 0}) || len(v) != 3 {
		t.Errorf("TopK(k > n) = %v %v", v, i)
	}
	sp := DefaultSamplerParams()
	if sp != (SamplerParams{TopP: 1, RepetitionPenalty: 1, Seed: SeedRandom}) {
		t.Errorf("DefaultSamplerParams = %+v", sp)
	}
	sp = SamplerParams{Temperature: 0.9, TopK: 40, TopP: 0.95, MinP: 0.02, RepetitionPenalty: 1.1, Seed: 7}
	smp := must(NewSampler(sp))
	defer smp.Close()
	got := make([]int32, len(w.Sampled))
	for i := range got {
		got[i] = must(smp.Sample(last, w.Prompt))
	}
	if !reflect.DeepEqual(got, w.Sampled) {
		t.Errorf("Sampler draws %v, Python %v", got, w.Sampled)
	}
	greedy := must(NewSampler(DefaultSamplerParams()))
	defer greedy.Close()
	if tok := must(greedy.Sample(last, nil)); tok != w.Next {
		t.Errorf("greedy Sample = %d, want %d", tok, w.Next)
	}
}
