//! The walsender ceiling: the same WAL the relay drained, read through the project's own replication session,
//! decoder and transaction assembler without publishing anything, from a second slot on the same publication
//! created before the backlog. Counts outbox inserts from the first to the last one of the backlog; run after the
//! relay has stopped, so the walsender has the machine to itself.

use std::time::Duration;

use walrelay_core::source::{
    replication::{self, StartAt},
    transaction::{Assembled, Assembler},
};

use super::{
    lab::Lab,
    procfs::{Mark, Throughput, Watched},
};

/// Longest wait for the next replication message.
const RECV_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads `events` outbox inserts from `slot`; CPU per event of the walsender and of this process (the reader).
pub(super) async fn measure(lab: &Lab, slot: &str, events: u64) -> anyhow::Result<Throughput> {
    let at = StartAt {
        start: pgoutput::Lsn::ZERO,
        ack: pgoutput::Lsn::ZERO,
        status_interval: Duration::from_secs(1),
        stop: None,
    };
    let settings = &lab.settings;
    let mut client = replication::open(&settings.pg_url, &lab.host, slot, &settings.publication, at).await?;
    let watched: Vec<Watched> =
        [Watched::some("walsender", lab.walsender_pid(slot).await?), Some(Watched::this("reader"))]
            .into_iter()
            .flatten()
            .collect();
    let mut assembler = Assembler::new(settings)?;
    let mut first = None;
    let mut count = 0u64;
    let last = loop {
        let Ok(received) = tokio::time::timeout(RECV_TIMEOUT, client.recv()).await else {
            anyhow::bail!("slot {slot}: nothing for {RECV_TIMEOUT:?} after {count} of {events} events");
        };
        let Some(event) = received? else {
            anyhow::bail!("slot {slot}: the session ended after {count} of {events} events");
        };
        if let Assembled::Row { .. } = assembler.push(event)? {
            count += 1;
            if count == 1 {
                first = Some(Mark::take(&watched, count));
            }
            if count == events {
                break Mark::take(&watched, count);
            }
        }
    };
    client.abort();
    let first = first.ok_or_else(|| anyhow::anyhow!("no event read"))?;
    Ok(Throughput::between(&first, &last))
}
