// Paris: ask the embedded default model a question through the Go binding (chat template,
// greedy decoding), streaming the answer as it is generated.
//
//	cd examples/go && PKG_CONFIG_PATH=$(../../.venv/bin/python -m realm_embed config --pkgconfigdir) go run ./paris
package main

import (
	"context"
	"fmt"
	"log"
	"os"

	"realm.dev/realm"
)

func main() {
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

	question := "What is the capital of France?"
	if len(os.Args) > 1 {
		question = os.Args[1]
	}
	prompt, err := m.ApplyChatTemplate([]realm.Message{{Role: "user", Content: question}}, true)
	if err != nil {
		log.Fatal(err)
	}
	_, err = realm.Generate(context.Background(), s, prompt, realm.GenerateOptions{MaxTokens: 32},
		func(piece string) error {
			fmt.Print(piece)
			return nil
		})
	fmt.Println()
	if err != nil {
		log.Fatal(err)
	}
}
