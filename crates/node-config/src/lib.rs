//! The configuration one part of a node hands to the next.
//!
//! Today that is [`guest`]: the small FAT disk the HostOS agent attaches to the GuestOS VM,
//! holding `guest.json` ([`guest::GuestConfig`]), which the orchestrator reads at start.
//! Both sides use this crate, so the contract has one definition.

pub mod guest;
