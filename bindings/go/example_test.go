package realm_test

import (
	"context"
	"fmt"
	"log"

	"realm.dev/realm"
)

// The README's example: ask the embedded default model, greedy, streaming the answer.
func ExampleGenerate() {
	if err := realm.Init(); err != nil {
		log.Fatal(err)
	}
	m, err := realm.StoreDefaultModel(0)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	s, err := m.NewSession(0)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	prompt, _ := m.ApplyChatTemplate([]realm.Message{{Role: "user", Content: "What is the capital of France?"}}, true)
	res, err := realm.Generate(context.Background(), s, prompt, realm.GenerateOptions{MaxTokens: 32},
		func(piece string) error { fmt.Print(piece); return nil })
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("\n[%s, %d tokens]\n", res.FinishReason, res.NGenerated)
	// Output:
	// The capital of France is Paris.
	// [eos, 7 tokens]
}
