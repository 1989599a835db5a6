//! The ScaledObject controller (`spillway run`): the custom resource ([`crd`]), the HPA each
//! object owns ([`hpa`]), the conversion of its triggers into what the poller reads
//! ([`triggers`]), the cache of the Secrets they name ([`secrets`]), the TriggerAuthentications
//! that map their parameters to Secrets ([`trigger_auth`], cached by [`trigger_auth_cache`]),
//! the step to and from zero ([`scale_to_zero`], pure), what deleting an object restores
//! ([`restore`], pure), the watch and reconcile loop against the cluster ([`reconcile`]), the
//! leader Lease ([`leader`]) and the admission webhook that checks a ScaledObject's writer may
//! scale its target ([`admission`]).

pub mod admission;
pub mod crd;
pub mod hpa;
pub mod leader;
pub mod reconcile;
pub mod restore;
pub mod scale_to_zero;
pub mod secrets;
pub mod trigger_auth;
pub mod trigger_auth_cache;
pub mod triggers;
