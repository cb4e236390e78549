//! Operator commands built on the relay's parts: `setup`, `status`, `doctor`, `peek`, `replay`, `skip`, `verify`,
//! `teardown`, and the trailing replay slot kept by `run --replay-retention`.

pub mod backfill;
pub mod doctor;
mod history;
pub mod peek;
pub mod prune;
pub mod replay;
pub mod retention;
pub mod setup;
pub mod skip;
pub mod status;
pub mod teardown;
pub mod verify;
