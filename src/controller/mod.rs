//! The ScaledObject controller: the custom resource, the HPA it owns, the conversion of its
//! triggers into what the poller reads, the cache of the Secrets they name, and the watch and
//! reconcile loop.

pub mod crd;
pub mod hpa;
pub mod leader;
pub mod reconcile;
pub mod secrets;
pub mod triggers;
