//! The ScaledObject controller (`spillway run`): the custom resource ([`crd`]), the HPA each
//! object owns ([`hpa`]), the conversion of its triggers into what the poller reads and the
//! fetching of their Secrets ([`triggers`]), the step to and from zero ([`scale_to_zero`], pure),
//! the reconcile loop against the cluster ([`reconcile`]) and the leader Lease ([`leader`]).

pub mod crd;
pub mod hpa;
pub mod leader;
pub mod reconcile;
pub mod scale_to_zero;
pub mod triggers;
