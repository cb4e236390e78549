//! Throwaway real servers for walrelay's integration tests, benchmarks and `walrelay demo`.
//!
//! Each [`Postgres`] and [`Nats`] (or [`NatsCluster`]) runs in its own temporary directory on free loopback ports
//! and is torn down when dropped, also when a test fails (design §5). Calls are synchronous and short; async tests
//! call them directly.
//!
//! ```no_run
//! # fn main() -> Result<(), walrelay_testkit::KitError> {
//! use walrelay_testkit::{Nats, Postgres};
//!
//! let pg = Postgres::start()?;
//! pg.psql("CREATE TABLE outbox (id bigserial PRIMARY KEY, payload bytea)")?;
//! let nats = Nats::start()?;
//! println!("{} -> {}", pg.url("postgres"), nats.url());
//! # Ok(())
//! # }
//! ```
//!
//! Binaries are found as described in [`locate`]; [`walrelay_bin`] provides the binary under test and [`Process`]
//! runs it with captured output.

mod binary;
mod cluster;
mod command;
mod error;
pub mod locate;
mod logfile;
mod nats;
mod net;
mod postgres;
mod process;
mod proctree;
mod wait;

pub use binary::{walrelay_bin, RELEASE_ENV, WALRELAY_BIN_ENV};
pub use cluster::{NatsCluster, CLUSTER_NAME};
pub use error::KitError;
pub use nats::{Nats, NatsBuilder};
pub use net::{free_port, HOST};
pub use postgres::{Postgres, PostgresBuilder, ServerTls, PSQL_TIMEOUT, SUPERUSER};
pub use process::Process;
pub use wait::{wait_until, POLL_INTERVAL};
