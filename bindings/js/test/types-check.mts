// Compiled by native.test.cjs with tsc --noEmit --strict: index.d.ts must describe the real API.
import realm, {
  ErrorCode, GuestAbiError, GuestHost, GuestLimitError, Model, Realm, RealmError, Sampler, Session, Tenant, topK, runGuest,
} from 'realm-embed';
import type {
  AsyncOptions, Completion, GenerateOptions, GuestHostOptions, GuestModule, GuestResult, ModelInfo, SessionOptions,
} from 'realm-embed';

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
  const fastOptions: SessionOptions = { nCtx: 64, precision: 'fast', device: 'cpu' };
  model.createSession(fastOptions).close();
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

export async function asyncCalls(bytes: Uint8Array): Promise<number> {
  const model: Model = await Model.storeDefaultAsync({ id: 1n });
  const again: Model = await Model.storeAsync(bytes, { signal: AbortSignal.timeout(1000) });
  const file: Model = await Model.storeFileAsync('/x.gguf');
  const ids: Int32Array = await model.tokenizeAsync('Hi', { addSpecial: false, signal: new AbortController().signal });
  const text: string = await model.detokenizeAsync(ids) + await model.applyChatTemplateAsync([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: false });
  const s: Session = model.createSession();
  const o: AsyncOptions = { signal: AbortSignal.abort() };
  let h: Float32Array = await s.embedTokensAsync(ids, o);
  h = await s.forwardLayerAsync(0, h, 0);
  const logits: Float32Array = await s.computeLogitsAsync(h, {});
  const last: Float32Array = await s.decodeAsync([1, 2], { allLogits: true, signal: o.signal });
  const n: number = s.pendingCalls + model.pendingCalls;
  for (const m of [again, file]) m.close();
  return logits.length + last.length + text.length + n;
}

export async function guests(model: Model): Promise<string> {
  const host = new GuestHost({ memoryMiB: 16, timeoutMs: 5000 });
  const g: GuestModule = host.load('generate');
  const t: Tenant = await host.tenant(g, model, { name: 'a', onText: (s: string) => void s });
  const r: GuestResult = await t.generate('Hi', { maxTokens: 4, fused: true, seed: 1n, signal: AbortSignal.timeout(1000) });
  const rc = await t.call('abi_version');
  const bytes: Buffer = await t.read(0, 16);
  await t.write(0, bytes);
  const st = await t.state();
  await t.close();
  await host.close();
  const one: GuestResult = await runGuest('generate', { model, prompt: 'Hi', maxTokens: 2, memoryMiB: 8 });
  const fastHost = new GuestHost({ precision: 'fast' } satisfies GuestHostOptions);
  const ft: Tenant = await fastHost.tenant(g, model, { precision: 'exact' });
  const precisions: string = `${fastHost.precision} ${ft.precision}`;
  await fastHost.close();
  let why = '';
  try {
    host.load(new Uint8Array(4));
  } catch (e) {
    if (e instanceof GuestAbiError) why = e.message;
    if (e instanceof GuestLimitError) why = e.reason;
  }
  return `${r.text} ${r.tokenIds.length} ${String(rc)} ${st.sessions.length} ${one.finishReason} ${why} ${GuestHost.abiVersion} ${realm.GUEST_ABI_VERSION} ${precisions}`;
}
