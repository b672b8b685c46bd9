//! End-to-end tests: the real gateway, bridge and workers against the real RabbitMQ.
//!
//! One test binary with a module per area (linking one binary instead of a dozen saves minutes
//! on two cores); nextest still runs every test in its own process.

mod bench;
mod clients;
mod cluster;
mod command_line;
mod conformance;
mod faults;
mod hostile;
mod hostile_clients;
mod ipc;
mod jsonrpc;
mod lifecycle;
mod limits;
mod node_worker;
mod poison;
mod python_sdk;
mod resilience;
mod routing;
mod security;
mod workers;
