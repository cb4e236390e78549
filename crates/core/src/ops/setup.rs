//! `walrelay setup`: create the publication, the slot and the stream if missing. Idempotent.
//!
//! In: the settings. Out: a publication `FOR TABLE <outbox> WITH (publish = 'insert')`, a pgoutput slot and a
//! JetStream stream covering the subjects; a line per object saying whether it was created or already there.

use crate::{config::Settings, relay::RelayError, sink::stream, source, source::publication, source::slot};

/// Creates what is missing; running it twice changes nothing.
pub async fn run(settings: &Settings) -> Result<(), RelayError> {
    let control = source::connect(&settings.pg_url).await?;
    slot::check_wal_level(&control).await?;
    publication::check_table(&control, settings).await?;
    let created = publication::ensure(&control, &settings.publication, &settings.table).await?;
    println!("publication {}: {}", settings.publication, if created { "created" } else { "exists" });
    match slot::info(&control, &settings.slot).await? {
        Some(info) => {
            info.check()?;
            println!(
                "slot {}: exists (confirmed_flush_lsn {})",
                settings.slot,
                info.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
            )
        }
        None => {
            let lsn = slot::create(&control, &settings.slot).await?;
            println!("slot {}: created at {lsn}", settings.slot);
        }
    }
    let (_client, js) = stream::connect(settings).await?;
    let (_, created) = stream::ensure(&js, settings, true).await?;
    println!(
        "stream {}: {} (subjects {})",
        settings.stream,
        if created { "created" } else { "exists" },
        stream::stream_subjects(settings).join(", ")
    );
    Ok(())
}
