//! The Connector: runs on the customer's ERP server, extracts the standard files from the ERP database, validates
//! and sends them to the Comms server, and applies the files that come back down.
//!
//! Modules, leaf -> top; a module imports only from modules above it in this list, never from one below, so
//! there is no import cycle (check with `grep -n 'crate::' src/<module>`):
//!
//! 1. `erp` — the ERP connection (`ErpConfig`, `ErpKind`, passwords, `TextEncoding`, connection strings) with
//!    `erp::source` (the `Source` trait and its backends) and `erp::writeback` (the `WriteBack` trait and its
//!    backends, the ledger). Imports nothing from the crate.
//! 2. `mapping` (the admin's SQL per file), `proxy`, `pending`, `order_dates` (the ISO rewrite of downstream
//!    order files) — no code imports from the crate.
//! 3. `check` (validation; uses `mapping`), `journal` (uses `mapping`).
//! 4. `extract` (uses `check`, `mapping`, `erp::source`), `delivery` (uses `erp`, links to `journal` in its docs;
//!    never `config`).
//! 5. `config` (`connector.toml` parsed into typed values; uses `erp` and `delivery`'s config types).
//! 6. `agent` (the `Connector` and its commands), then `receive` (the `Connector`'s downstream side and `run`).
//! 7. `doctor` (`connector doctor`: uses `agent`, `config`, `proxy`; nothing imports it).

pub mod check;
pub mod erp;
pub mod extract;
pub mod mapping;

pub mod agent;
pub mod config;
pub mod delivery;
pub mod doctor;
pub mod journal;
pub mod order_dates;
pub mod pending;
pub mod proxy;
pub mod receive;
