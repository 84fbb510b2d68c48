// Compiled by native.test.cjs with tsc --noEmit --strict: index.d.ts must describe the real API.
import realm, { ErrorCode, Model, Realm, RealmError, Sampler, Session, topK } from 'realm-embed';
import type { Completion, GenerateOptions, ModelInfo } from 'realm-embed';

export async function demo(): Promise<string> {
  Realm.init();
  const v: string = Realm.version();
  const model: Model = Model.storeDefault();
  const info: ModelInfo = model.info();
  const n: number = info.nLayer + info.nEmbd;
  const ids: Int32Array = model.tokenize('Hello', { addSpecial: false });
  const text: string = model.detokenize(ids) + model.tokenPiece(ids[0]).toString('utf8');
  const w = model.tensor('output_norm.weight');
  const shape: readonly number[] = w.shape;
  const s: Session = model.createSession({ nCtx: 128 });
  let h: Float32Array = s.embedTokens(ids);
  for (let layer = 0; layer < info.nLayer; layer++) h = s.forwardLayer(layer, h, 0);
  const logits: Float32Array = s.computeLogits(h);
  const best = topK(logits.subarray(0, info.nVocab), 1).ids[0];
  const f: Session = s.fork();
  f.truncate(1);
  f.reset();
  f.close();
  const opts: GenerateOptions = { maxTokens: 8, temperature: 0.7, seed: 1n, stop: ['\n'], signal: AbortSignal.timeout(1000) };
  const prompt = model.applyChatTemplate([{ role: 'user', content: 'Hi' }]);
  const g = s.generate(prompt, opts);
  let out = '';
  for await (const piece of g) out += piece;
  const done: Completion = await g.result;
  const sampler = new Sampler({ temperature: 1, seed: 3 });
  const tok: number = sampler.sample(s.decode([best]), [1, 2]);
  sampler.close();
  s.close();
  model.close();
  try {
    Model.storeFile('/nope');
  } catch (e) {
    if (e instanceof RealmError && e.code === ErrorCode.IO) out += e.codeName;
  }
  return `${v} ${n} ${text} ${shape.length} ${out} ${done.finishReason} ${tok} ${realm.ABI_VERSION}`;
}
