//! `walrelay setup`: create the publication, the slot and the stream if missing. Idempotent.
//!
//! In: the settings. Out: a publication `FOR TABLE <outbox> WITH (publish = 'insert')`, a pgoutput slot and a
//! JetStream stream covering the subjects; a line per object saying whether it was created or already there.
//! Against a standby (design.md §4b) the publication is created on the primary (`--primary-url`) and the slot on the
//! standby; with `--failover` the slot is a failover slot (see [`slot::create`]).

use crate::{config::Settings, relay::RelayError, sink::stream, source::slot, source::standby};

/// Creates what is missing; running it twice changes nothing.
pub async fn run(settings: &Settings) -> Result<(), RelayError> {
    let standby::Checked { control, host, server, primary } = standby::check_server(settings).await?;
    let created = standby::ensure_publication(settings, &control, &server, primary.as_ref(), true).await?;
    let place = if server.in_recovery { " (on the primary)" } else { "" };
    println!("publication {}: {}", settings.publication, if created { "created" } else { "exists" });
    if created {
        tracing::debug!(publication = %settings.publication, place, "publication created");
    }
    match slot::info(&control, &settings.slot).await? {
        Some(info) => {
            info.check()?;
            slot::ensure_failover(settings, &host, &server, &info).await?;
            println!(
                "slot {}: exists (confirmed_flush_lsn {})",
                settings.slot,
                info.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
            )
        }
        None => {
            let opts = slot::CreateOptions { failover: settings.failover, primary: primary.as_ref() };
            let lsn = slot::create(&control, &server, &settings.slot, opts).await?;
            println!("slot {}: created at {lsn}", settings.slot);
        }
    }
    ensure_stream(settings).await?;
    Ok(())
}

/// Connects to NATS and creates the stream if it is missing, saying which (setup's last step, and the backfill's
/// before it publishes).
pub(crate) async fn ensure_stream(
    settings: &Settings,
) -> Result<(async_nats::Client, async_nats::jetstream::Context), RelayError> {
    let (client, js) = stream::connect(settings).await?;
    let (_, created) = stream::ensure(&js, settings, true).await?;
    println!(
        "stream {}: {} (subjects {})",
        settings.stream,
        if created { "created" } else { "exists" },
        stream::stream_subjects(settings).join(", ")
    );
    Ok((client, js))
}
