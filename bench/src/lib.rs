//! The load generator for million-connection benchmarks of gochat-compatible servers.
//!
//! # Layout
//! - [`wsclient`]: the client side of gochat's WebSocket (upgrade, masked frames, server frames).
//! - [`engine`]: a fleet of connections on one thread — small tasks, one scratch buffer.
//! - [`worker`]: fleets on threads or in `bench worker` processes (20k descriptors a process).
//! - [`fleets`]: a run's connections split over fleets and source addresses, counters summed.
//! - [`agent`]: `bench agent`, which runs fleets in worker processes for a coordinator on
//!   another machine (load from several machines).
//! - [`api`]: gochat's REST API for users in bulk and pushes at a rate.
//! - [`server`]: the server's processes (memory, CPU by pid or port), kernel slab, and a local
//!   gochat-rs cluster the bench can start per driver.
//! - [`scenario`]: `connections`, `fanout`, `latency`, `private`; [`echo`]: raw echo
//!   throughput and the fastwebsockets-on-tokio baseline server; [`sequence`]: numbered
//!   messages through node failures (losses, duplicates, order, time to recover), its receivers
//!   resuming from their position through [`ordering`]: a room's messages in seq order, each
//!   once, gaps held, fetched or told.
//! - [`targets`]: the servers a run is measured against in turn (running, spawned, a peer's
//!   script, the floor) and their figures side by side; [`floor`]: one write per delivery from
//!   one thread, the kernel's cost per send on the machine of the day.
//! - [`result`], [`report`]: the JSON result of a run, and markdown tables and SVG charts.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod echo;
pub mod engine;
pub mod fleets;
pub mod floor;
pub mod ordering;
pub mod report;
pub mod result;
pub mod scenario;
pub mod sequence;
pub mod server;
pub mod targets;
pub mod worker;
pub mod wsclient;
