// Paris: ask the embedded default model a question through the Node binding (chat template,
// greedy decoding), streaming the answer as it is generated.
//
//   cd bindings/js && npm install            # once: koffi from the registry
//   REALM_PYTHON=.venv/bin/python node examples/node/paris.mjs ["another question"]
import { Model, Realm } from '../../bindings/js/index.mjs';

Realm.init();                                          // ~1 s: starts Python and torch
const model = Model.storeDefault();                    // SmolLM2-135M-Instruct Q4_1
const session = model.createSession();
const question = process.argv[2] ?? 'What is the capital of France?';
const prompt = model.applyChatTemplate([{ role: 'user', content: question }]);
for await (const piece of session.generate(prompt, { maxTokens: 32 })) {
  process.stdout.write(piece);                         // "The capital of France is Paris."
}
process.stdout.write('\n');
session.close();
model.close();
