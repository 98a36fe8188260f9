// The replica's interface from JavaScript, through DFINITY's @dfinity/agent 3.4 as dApp front
// ends use it, with its default checks on (certificates against the fetched root key, query
// answers against the node's signature). Run by crates/icos-cli/tests/replica.rs:
//
//   node story.mjs <replica URL> <counter.wasm> <another replica's URL>
//
// Prints one `js: ...` line per step and exits 1 with the reason on the first failure.

import { Actor, CanisterStatus, HttpAgent } from '@dfinity/agent';
import { IDL } from '@dfinity/candid';
import { Ed25519KeyIdentity } from '@dfinity/identity';
import { Principal } from '@dfinity/principal';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

const [url, wasmPath, otherUrl] = process.argv.slice(2);
if (!url || !wasmPath || !otherUrl) {
  console.error('usage: node story.mjs <replica URL> <counter.wasm> <another replica URL>');
  process.exit(2);
}
const wasm = readFileSync(wasmPath);
const say = (...a) => console.log('js:', ...a);
const check = (ok, what) => {
  if (!ok) throw new Error(`check failed: ${what}`);
};
const hex = (b) => Buffer.from(b).toString('hex');

// The management canister's methods this story uses (Candid lets a caller leave out the
// optional fields it does not set).
const management = () =>
  IDL.Service({
    provisional_create_canister_with_cycles: IDL.Func(
      [IDL.Record({ amount: IDL.Opt(IDL.Nat) })],
      [IDL.Record({ canister_id: IDL.Principal })],
      [],
    ),
    install_code: IDL.Func(
      [
        IDL.Record({
          mode: IDL.Variant({ install: IDL.Null, reinstall: IDL.Null }),
          canister_id: IDL.Principal,
          wasm_module: IDL.Vec(IDL.Nat8),
          arg: IDL.Vec(IDL.Nat8),
        }),
      ],
      [],
      [],
    ),
  });
const counter = () =>
  IDL.Service({
    inc: IDL.Func([], [IDL.Nat64], []),
    get: IDL.Func([], [IDL.Nat64], ['query']),
  });

const mgmtAt = (agent, effectiveCanisterId) =>
  Actor.createActor(management, { agent, canisterId: 'aaaaa-aa', effectiveCanisterId });

async function expectReject(promise, words, what) {
  try {
    await promise;
  } catch (e) {
    const text = String(e?.message ?? e);
    check(text.includes(words), `${what}: the error does not say "${words}": ${text}`);
    say(`${what}: refused (${words})`);
    return;
  }
  throw new Error(`${what}: was not refused`);
}

async function main() {
  const me = Ed25519KeyIdentity.generate(new Uint8Array(32).fill(11));
  const agent = await HttpAgent.create({ host: url, identity: me, shouldFetchRootKey: true });
  check(agent.rootKey && agent.rootKey.length > 0, 'the root key was fetched');
  say(`root key fetched (${agent.rootKey.length} bytes)`);

  const first = Principal.fromText('rwlgt-iiaaa-aaaaa-aaaaa-cai');
  const { canister_id: id } = await mgmtAt(agent, first).provisional_create_canister_with_cycles({
    amount: [],
  });
  say(`created ${id.toText()}`);
  await mgmtAt(agent, id).install_code({
    mode: { install: null },
    canister_id: id,
    wasm_module: [...wasm],
    arg: [...new Uint8Array([0x44, 0x49, 0x44, 0x4c, 0, 0])],
  });
  say('installed the counter');

  const c = Actor.createActor(counter, { agent, canisterId: id });
  check((await c.inc()) === 1n, 'the first inc answers 1');
  check((await c.inc()) === 2n, 'the second inc answers 2');
  say('two update calls answered 1 and 2 (certified)');
  check((await c.get()) === 2n, 'the query answers 2');
  say('query answered 2 (node signature verified)');

  const status = await CanisterStatus.request({
    canisterId: id,
    agent,
    paths: ['module_hash', 'controllers', 'time'],
  });
  const moduleHash = status.get('module_hash');
  check(
    moduleHash === createHash('sha256').update(wasm).digest('hex'),
    `read_state module_hash ${moduleHash} is the module's SHA-256`,
  );
  const controllers = status.get('controllers').map((p) => p.toText());
  check(
    controllers.includes(me.getPrincipal().toText()),
    `the creator controls the canister: ${controllers}`,
  );
  say(`read_state: module hash ${moduleHash.slice(0, 16)}..., controller ${controllers[0]}`);

  // Refusals, as the interface reports them.
  const stranger = await HttpAgent.create({
    host: url,
    identity: Ed25519KeyIdentity.generate(new Uint8Array(32).fill(12)),
    shouldFetchRootKey: true,
  });
  await expectReject(
    mgmtAt(stranger, id).install_code({
      mode: { reinstall: null },
      canister_id: id,
      wasm_module: [...wasm],
      arg: [],
    }),
    'only the controllers',
    'a reinstall by a non-controller',
  );
  const missing = Actor.createActor(counter, {
    agent,
    canisterId: Principal.fromText('rrkah-fqaaa-aaaaa-aaaaq-cai'),
  });
  await expectReject(missing.inc(), 'not found', 'a call to a canister that does not exist');

  // Trusting another network's root key (a sound key that did not sign), the agent must
  // refuse this replica's certificates.
  const wrongKey = (await HttpAgent.create({ host: otherUrl, shouldFetchRootKey: true })).rootKey;
  check(hex(wrongKey) !== hex(agent.rootKey), 'the other replica has its own root key');
  const misled = await HttpAgent.create({
    host: url,
    identity: me,
    rootKey: wrongKey,
    shouldFetchRootKey: false,
  });
  let refused = false;
  try {
    await Actor.createActor(counter, { agent: misled, canisterId: id }).inc();
  } catch (e) {
    refused = true;
    say(`with a wrong root key the certificate is refused: ${String(e?.message ?? e).split('\n')[0]}`);
  }
  check(refused, 'a certificate checked against a wrong root key was accepted');
  say('story complete');
}

main().catch((e) => {
  console.error(`js: ${e?.stack ?? e}`);
  process.exit(1);
});
