//! sluice — an outbound mail delivery engine.
//!
//! Data path: `intake` (HTTP, SMTP) → `spool` (durable, group commit) → `queue` (timer and
//! per-destination queues) → `delivery` (one task per connection, SMTP state machine) →
//! outcome (spool, events). `dns` resolves MX plans; `verp` signs envelope senders.

pub mod api;
pub mod bounce;
pub mod campaign;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod dkim;
pub mod dns;
pub mod domain;
pub mod engine;
pub mod events;
pub mod feedback;
pub mod inline_str;
pub mod intake;
pub mod loadgen;
pub mod memory;
pub mod metrics;
pub mod public;
pub mod quarantine;
pub mod queue;
pub mod render;
pub mod rules;
pub mod rules_sync;
pub mod sink;
pub mod smtp_server;
pub mod spool;
pub mod template;
pub mod testkit;
pub mod throttle;
pub mod unsubscribe;
pub mod verp;

pub use clock::{Clock, ManualClock};
pub use config::Config;
pub use engine::Engine;
