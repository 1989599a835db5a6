//! The ScaledObject controller: the custom resource, the HPA it owns, and the conversion of
//! its triggers into what the poller reads. This part is pure (no cluster needed); the watch
//! and reconcile loop build on it.

pub mod crd;
pub mod hpa;
pub mod leader;
pub mod reconcile;
pub mod triggers;
