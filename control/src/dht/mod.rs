//! The discovery DHT: a Kademlia overlay of CA members that stores signed node records under
//! keys derived from node ids, names and overlay addresses.
//!
//! Sans-IO: time and randomness come from the caller; nothing here reads a clock, creates a
//! random source or touches a socket. Every parser is bounded and never panics on input.

pub mod certs;
pub mod key;
pub mod record;
pub mod store;

pub mod auth;
pub mod bindings;
pub mod lookup;
pub mod messages;
pub mod node;
pub mod routing;

pub use node::{Dht, DhtConfig, DhtEvent, DhtStats, LookupId, LookupSummary};
