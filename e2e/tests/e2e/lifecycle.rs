//! Starting and stopping the provider and the host.

use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{bail, Result};
use async_nats::client::RequestErrorKind;
use messaging_nats_e2e::host::process_alive;

/// Waits until no process in `pids` runs any more.
async fn wait_exited(pids: &[u32]) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while pids.iter().any(|pid| process_alive(*pid)) {
        if Instant::now() > deadline {
            bail!("processes {pids:?} still run {WAIT:?} later");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_provider_ends_its_process() -> Result<()> {
    let lattice = Lattice::with_echo().await?;
    let pids = lattice.host.provider_processes();
    assert_eq!(pids.len(), 1, "one provider process expected: {pids:?}");

    lattice.host.stop_provider(PROVIDER_ID).await?;

    wait_exited(&pids).await?;
    assert!(lattice.host.provider_processes().is_empty());
    let inventory = lattice.host.inventory().await?;
    assert!(
        inventory.providers().is_empty(),
        "{:?}",
        inventory.providers()
    );
    let error = lattice
        .client
        .request(SUBJECT, "hello".into())
        .await
        .expect_err("nobody should serve the subject any more");
    assert_eq!(error.kind(), RequestErrorKind::NoResponders);
    lattice.host.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn host_stops_cleanly() -> Result<()> {
    let lattice = Lattice::with_echo().await?;
    let pids = lattice.host.provider_processes();
    assert_eq!(pids.len(), 1, "one provider process expected: {pids:?}");
    let mut stopped = lattice
        .subscribe(&format!(
            "wasmbus.evt.{}.host_stopped",
            lattice.host.lattice()
        ))
        .await?;

    lattice.host.stop().await?;

    next(&mut stopped, WAIT).await?;
    wait_exited(&pids).await
}
