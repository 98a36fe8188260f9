//! What the replica's agent tests share: the counter canister through `ic-agent`.

use candid::{Decode, Encode};
use certified_state::canister_id;
use ic_agent::{Agent, AgentError};
use ic_principal::Principal;
use ic_utils::interfaces::ManagementCanister;

/// A canister with `wasm` installed, created through the management canister.
pub async fn create_with(a: &Agent, wasm: &[u8]) -> Principal {
    let mgmt = ManagementCanister::create(a);
    let (id,) = mgmt
        .create_canister()
        .as_provisional_create_with_amount(None)
        .with_effective_canister_id(canister_id(0))
        .call_and_wait()
        .await
        .unwrap();
    mgmt.install_code(&id, wasm).call_and_wait().await.unwrap();
    id
}

pub async fn create_counter(a: &Agent) -> Principal {
    create_with(a, &example_canisters::counter_wasm()).await
}

/// The counter's `inc`: its count after the call.
pub async fn inc(a: &Agent, id: &Principal) -> Result<u64, AgentError> {
    let r = a
        .update(id, "inc")
        .with_arg(Encode!().unwrap())
        .call_and_wait()
        .await?;
    Ok(Decode!(&r, u64).unwrap())
}

/// The counter's `get`, by a query (its signature checked).
pub async fn get(a: &Agent, id: &Principal) -> Result<u64, AgentError> {
    let r = a
        .query(id, "get")
        .with_arg(Encode!().unwrap())
        .call()
        .await?;
    Ok(Decode!(&r, u64).unwrap())
}
