//! The real `wash` (0.43) runs the README's commands against the embedded
//! host (and wadm): `wash build` and `wash inspect`, starting, configuring
//! and linking the provider, and deploying `wadm.yaml`. Each README block
//! is read from the README itself; only the lattice (through the
//! environment) and the server URLs are filled in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{bail, Context as _, Result};
use messaging_nats_e2e::host::{consumer_link, process_alive, DEFAULT_LINK_NAME};
use messaging_nats_e2e::paths::{self, repo_root};
use messaging_nats_e2e::readme::{block, fill};
use messaging_nats_e2e::wash::Wash;

/// The server every README command names.
const README_SERVER: &str = "nats://127.0.0.1:4222";

/// `wash` for the lattice of `lattice`.
fn wash(lattice: &Lattice) -> Result<Wash> {
    Wash::new(lattice.nats.port(), lattice.host.lattice())
}

/// Runs the README block `name` in `dir`, with `placeholders` filled in;
/// returns what wash printed.
async fn run_block(
    wash: &Wash,
    dir: &Path,
    text: &str,
    placeholders: &[(&str, &str)],
) -> Result<String> {
    let line = fill(text, placeholders)?;
    Ok(wash.shell(dir, &line).await?.ok()?.output())
}

/// The repository's tracked files, copied into a fresh folder, as a user's
/// clone would have them.
fn clone_of_the_repository() -> Result<tempfile::TempDir> {
    let root = repo_root();
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output()
        .context("git ls-files")?;
    if !listed.status.success() {
        bail!(
            "git ls-files failed: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let copy = tempfile::Builder::new()
        .prefix("messaging-nats-clone")
        .tempdir()?;
    for path in listed.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let relative = PathBuf::from(String::from_utf8_lossy(path).into_owned());
        let from = root.join(&relative);
        if !from.is_file() {
            continue; // deleted in the work tree
        }
        let to = copy.path().join(&relative);
        std::fs::create_dir_all(to.parent().context("file without folder")?)?;
        std::fs::copy(&from, &to).with_context(|| format!("copy {}", from.display()))?;
    }
    Ok(copy)
}

/// Runs the echo component as `id`.
async fn run_echo(lattice: &Lattice, id: &str) -> Result<()> {
    lattice
        .host
        .scale_component(id, &paths::echo_component_wasm()?, 10)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn wash_build_writes_an_archive_that_wash_inspect_reads_and_the_host_starts() -> Result<()> {
    let lattice = Lattice::start().await?;
    let clone = clone_of_the_repository()?;
    let target = paths::provider_target_dir();
    let wash = wash(&lattice)?.with_env("CARGO_TARGET_DIR", &target.display().to_string());

    let built = run_block(&wash, clone.path(), &block("wash-build")?, &[]).await?;
    let archive = clone.path().join("build/messaging-nats.par.gz");
    let inspected = wash
        .run(
            clone.path(),
            &["inspect", "-o", "json", "build/messaging-nats.par.gz"],
        )
        .await?
        .ok()?
        .json()?;
    let wit = wash
        .run(
            clone.path(),
            &["inspect", "--wit", "build/messaging-nats.par.gz"],
        )
        .await?
        .ok()?
        .stdout;
    lattice
        .host
        .start_provider(PROVIDER_ID, &archive, &[])
        .await?;
    lattice
        .deploy_echo(COMPONENT_ID, DEFAULT_LINK_NAME, SUBJECT)
        .await?;
    let reply = lattice.client.request(SUBJECT, "built".into()).await?;

    assert!(built.contains("Built artifact can be found at"), "{built}");
    assert!(archive.is_file(), "no archive at {}", archive.display());
    assert_eq!(inspected["name"], "messaging-nats", "{inspected}");
    assert_eq!(inspected["vendor"], "wasmcloud-community", "{inspected}");
    assert_eq!(
        inspected["version"],
        paths::provider_version()?.as_str(),
        "{inspected}"
    );
    let targets = inspected["targets"].as_array().context("targets")?;
    assert!(targets.iter().any(|t| t == "x86_64-linux"), "{inspected}");
    for (claim, prefix) in [("issuer", "A"), ("service", "V")] {
        let value = inspected[claim].as_str().unwrap_or_default();
        assert!(
            value.starts_with(prefix) && value.len() == 56,
            "{claim}: {inspected}"
        );
    }
    assert!(
        wit.contains("export wasmcloud:messaging/consumer@0.2.0"),
        "{wit}"
    );
    assert!(
        wit.contains("import wasmcloud:messaging/handler@0.2.0"),
        "{wit}"
    );
    assert_eq!(text(&reply), "echo: BUILT");
    lattice.host.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_wash_commands_start_configure_and_link_the_provider() -> Result<()> {
    let lattice = Lattice::start().await?;
    let wash = wash(&lattice)?;
    let url = lattice.nats.url();
    let cluster = format!("{url},{url}");
    run_echo(&lattice, "billing").await?;
    let mut events = lattice.subscribe("events.>").await?;

    let started = run_block(
        &wash,
        &repo_root(),
        &block("start-provider")?,
        &[(README_SERVER, &url)],
    )
    .await?;
    let handler = run_block(&wash, &repo_root(), &block("handler-link")?, &[]).await?;
    let consumer = run_block(
        &wash,
        &repo_root(),
        &block("consumer-link")?,
        &[("nats://n1:4222,nats://n2:4222", &cluster)],
    )
    .await?;
    lattice.wait_answering("audit.check").await?;
    let reply = lattice
        .client
        .request("audit.check", "hello".into())
        .await?;
    quiet(&mut events, Duration::from_millis(300)).await;
    lattice
        .client
        .publish("orders.created", "order 1".into())
        .await?;
    let event = next(&mut events, WAIT).await?;
    // The block's publish_allow: an answer to a reply subject outside it is
    // refused to the component (the same request with an inbox reply
    // subject was answered above). Same connection: the subscription is
    // at the server before the request.
    let mut elsewhere = lattice.client.subscribe("elsewhere.reply").await?;
    lattice
        .client
        .publish_with_reply("audit.check", "elsewhere.reply", "hello".into())
        .await?;
    let outside_allow = quiet(&mut elsewhere, Duration::from_secs(2)).await;

    assert!(
        started.contains("Configuration 'nats-defaults' put successfully"),
        "{started}"
    );
    assert!(
        started.contains("Provider [messaging-nats]") && started.contains("started on host"),
        "{started}"
    );
    assert!(
        handler.contains("Published link (messaging-nats) -> (billing) successfully"),
        "{handler}"
    );
    assert!(
        consumer.contains("Published link (billing) -> (messaging-nats) successfully"),
        "{consumer}"
    );
    assert_eq!(text(&reply), "echo: HELLO");
    assert_eq!(event.subject.as_str(), "events.orders.created");
    assert_eq!(text(&event), "handled 7 bytes");
    assert!(
        outside_allow.is_empty(),
        "answered outside publish_allow: {outside_allow:?}"
    );
    lattice.host.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_durable_link_delivers_from_the_stream_it_creates() -> Result<()> {
    let lattice = Lattice::with_echo().await?;
    let wash = wash(&lattice)?;
    run_echo(&lattice, "shipping").await?;
    // Its consumer link, for the events it publishes.
    lattice
        .host
        .put_link(consumer_link("shipping", PROVIDER_ID, DEFAULT_LINK_NAME)?)
        .await?;
    let mut events = lattice.subscribe("events.orders.>").await?;

    let linked = run_block(&wash, &repo_root(), &block("durable-link")?, &[]).await?;
    let js = async_nats::jetstream::new(lattice.client.clone());
    let deadline = Instant::now() + WAIT;
    while js.get_stream("ORDERS").await.is_err() {
        if Instant::now() > deadline {
            bail!("the provider made no ORDERS stream within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ack = js.publish("orders.shipped", "parcel".into()).await?.await?;
    let event = next(&mut events, WAIT).await?;

    assert!(
        linked.contains("Published link (messaging-nats) -> (shipping) successfully"),
        "{linked}"
    );
    assert_eq!(ack.stream, "ORDERS");
    assert_eq!(event.subject.as_str(), "events.orders.shipped");
    assert_eq!(text(&event), "handled 6 bytes");
    lattice.host.stop().await
}

/// Waits until `wash app status NAME -o json` says `deployed`.
async fn wait_wash_says_deployed(wash: &Wash, name: &str) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = wash
            .run(&repo_root(), &["app", "status", name, "-o", "json"])
            .await?;
        if let Ok(json) = status.json() {
            if json["status"]["status"]["type"] == "deployed" {
                return Ok(json);
            }
        }
        if Instant::now() > deadline {
            bail!("wash app status never said deployed: {}", status.output());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wash_app_deploy_status_and_delete_run_against_wadm() -> Result<()> {
    let (lattice, wadm) = Lattice::with_wadm().await?;
    let wash = wash(&lattice)?;
    let mut events = lattice.subscribe(EVENT_SUBJECT).await?;

    let deployed = run_block(&wash, &repo_root(), &block("wadm-deploy")?, &[]).await?;
    let status = wait_wash_says_deployed(&wash, "messaging-nats-echo").await?;
    lattice.wait_answering(SUBJECT).await?;
    quiet(&mut events, Duration::from_millis(300)).await;
    let reply = lattice.client.request(SUBJECT, "hello".into()).await?;
    let event = next(&mut events, WAIT).await?;
    let pids = lattice.host.provider_processes();
    let deleted = run_block(&wash, &repo_root(), &block("wadm-delete")?, &[]).await?;
    let deadline = Instant::now() + WAIT;
    while pids.iter().any(|pid| process_alive(*pid))
        || !lattice.host.inventory().await?.providers().is_empty()
    {
        if Instant::now() > deadline {
            bail!("the provider still runs after wash app delete");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert!(
        deployed.contains("Deployed application \"messaging-nats-echo\""),
        "{deployed}"
    );
    assert!(
        deployed.contains("messaging-nats-echo@"),
        "status line: {deployed}"
    );
    let scalers = status["status"]["scalers"].as_array().context("scalers")?;
    assert!(
        scalers.iter().all(|s| s["status"]["type"] == "deployed"),
        "{status}"
    );
    assert_eq!(pids.len(), 1, "one provider process: {pids:?}");
    assert_eq!(text(&reply), "echo: HELLO");
    assert_eq!(text(&event), "handled 5 bytes");
    assert!(
        deleted.contains("Deleted application: messaging-nats-echo"),
        "{deleted}"
    );
    assert!(lattice.host.links().await?.is_empty());
    drop(wadm);
    lattice.host.stop().await
}

/// A link config the provider rejects is no error to wash or wadm (the
/// host took the link; wasmCloud 1.x has no way for a provider to refuse
/// one): `wash app deploy` and `wash app status` say Deployed. The reason
/// is in the provider's log and in its health, which names the link and
/// the key, and health turns unhealthy for the host's checks.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_link_config_is_named_in_health_while_wash_says_deployed() -> Result<()> {
    let (lattice, wadm) = Lattice::with_wadm().await?;
    let wash = wash(&lattice)?;
    let dir = tempfile::tempdir()?;
    let root = repo_root();
    let yaml = fill(
        &std::fs::read_to_string(root.join("wadm.yaml"))?,
        &[
            (
                "file://./build",
                &format!("file://{}/build", root.display()),
            ),
            ("max_in_flight: \"64\"", "max_in_flight: \"0\""),
        ],
    )?;
    std::fs::write(dir.path().join("bad.yaml"), yaml)?;

    let deployed = wash
        .run(dir.path(), &["app", "deploy", "bad.yaml"])
        .await?
        .ok()?;
    let status = wait_wash_says_deployed(&wash, "messaging-nats-echo").await?;
    let provider = format!("{}.messaging_nats_echo-nats", lattice.host.lattice());
    let subject = format!("wasmbus.rpc.{provider}.health");
    let deadline = Instant::now() + WAIT;
    let health = loop {
        let answer = lattice.client.request(subject.clone(), "".into()).await?;
        let health: serde_json::Value = serde_json::from_slice(&answer.payload)?;
        if health["healthy"] == false || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    assert!(deployed.success, "{}", deployed.output());
    assert_eq!(status["status"]["status"]["type"], "deployed", "{status}");
    assert_eq!(health["healthy"], false, "{health}");
    let message = health["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("handler link messaging_nats_echo-echo/default rejected")
            && message.contains("'max_in_flight'")
            && message.contains("1 to 4096"),
        "{message}"
    );
    drop(wadm);
    lattice.host.stop().await
}
