//! Polling shared between replicas, as the scheduler sees it: which live replica owns each
//! connection group ([`Owners`], rendezvous hashing over the live set), and what the scheduler
//! tells the rest of the process in return ([`Placement`]: each trigger's spec fingerprint and
//! owner) and asks of other replicas ([`ForwardedAsk`]: a cold miss on a trigger another
//! replica polls).
//!
//! Rendezvous hashing: every replica scores every group by a hash of the group's key and the
//! replica's identity, and the highest score owns it. Each replica computes the same answer
//! from the same live set, with no coordination beyond that set, and a replica coming or going
//! moves only the groups it gains or had. Groups stay whole, so batching per broker connection
//! stays within one process. The hash is SHA-256, fixed across builds and platforms, so
//! replicas of different versions during a rolling upgrade still agree.
//!
//! Filling these is the job of the replicas' membership (Leases, the peer protocol), a layer
//! above; the scheduler only reads the live set and publishes what it places.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::cache::TriggerId;

/// One live replica: its identity (the member Lease's holder) and where its peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub identity: String,
    /// `host:port` of its metrics API, which also serves the peer routes.
    pub address: String,
}

/// The live replicas as this one knows them; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owners {
    me: Member,
    /// Every live replica, this one included, sorted by identity.
    members: Vec<Member>,
    /// False until the live set was first read: until then this replica owns every group, since
    /// polling a group twice for a moment is safe and polling it nowhere is not.
    known: bool,
}

impl Owners {
    /// Before the live set is known: this replica, `me`, owns everything.
    pub fn alone(me: Member) -> Self {
        Self {
            members: vec![me.clone()],
            me,
            known: false,
        }
    }

    /// The live set `members` (this replica is added when missing: a replica that runs is
    /// live to itself, even while its Lease cannot be renewed).
    pub fn known(me: Member, mut members: Vec<Member>) -> Self {
        if !members.iter().any(|m| m.identity == me.identity) {
            members.push(me.clone());
        }
        members.sort();
        members.dedup_by(|a, b| a.identity == b.identity);
        Self {
            me,
            members,
            known: true,
        }
    }

    pub fn me(&self) -> &Member {
        &self.me
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether the live set was read at least once.
    pub fn is_known(&self) -> bool {
        self.known
    }

    /// The replica that polls the connection group `group`: the highest rendezvous score.
    pub fn owner(&self, group: &str) -> &Member {
        self.members
            .iter()
            .max_by_key(|m| (score(group, &m.identity), &m.identity))
            .unwrap_or(&self.me)
    }

    /// Whether this replica polls `group`.
    pub fn is_mine(&self, group: &str) -> bool {
        !self.known || self.owner(group).identity == self.me.identity
    }
}

/// The rendezvous score of `identity` for `group`: the first 8 bytes of SHA-256 over both.
fn score(group: &str, identity: &str) -> u64 {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(group.as_bytes());
    context.update(&[0]);
    context.update(identity.as_bytes());
    let digest = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Where one trigger is polled, as the scheduler placed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its spec version in this process.
    pub version: u64,
    /// [`Trigger::spec_fingerprint`](crate::scalers::Trigger::spec_fingerprint): the same in
    /// every replica for the same spec.
    pub fingerprint: u64,
    /// The identity of the replica that polls it.
    pub owner: String,
}

/// Every pollable trigger's place, published by the scheduler at each change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub triggers: HashMap<TriggerId, Placed>,
    /// Connection groups this replica polls, and in all.
    pub owned_groups: usize,
    pub groups: usize,
}

/// A cold miss on triggers another replica polls: asks that replica for their first poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedAsk {
    pub owner: Member,
    /// The triggers, each with its spec fingerprint.
    pub triggers: Vec<(TriggerId, u64)>,
}

/// What a scheduler that shares polling is given: the live set to follow, where to publish its
/// placement, and where to send asks for triggers it does not poll.
#[derive(Debug)]
pub struct Shard {
    pub owners: watch::Receiver<Arc<Owners>>,
    pub placement: watch::Sender<Arc<Placement>>,
    pub forward: mpsc::UnboundedSender<ForwardedAsk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> Member {
        Member {
            identity: name.into(),
            address: format!("{name}:443"),
        }
    }

    fn owners_of(me: &str, live: &[&str]) -> Owners {
        Owners::known(member(me), live.iter().map(|n| member(n)).collect())
    }

    #[test]
    fn every_replica_agrees_on_one_owner_per_group() {
        let live = ["a", "b", "c"];
        let views: Vec<Owners> = live.iter().map(|me| owners_of(me, &live)).collect();
        let mut per_replica: HashMap<String, usize> = HashMap::new();
        for group in 0..3000 {
            let key = format!("kafka|broker-{group}:9092");
            let mine: Vec<&str> = views
                .iter()
                .filter(|v| v.is_mine(&key))
                .map(|v| v.me().identity.as_str())
                .collect();
            assert_eq!(mine.len(), 1, "{key}: owned by {mine:?}");
            *per_replica.entry(mine[0].to_owned()).or_default() += 1;
        }
        // Spread evenly: each of three near 1000.
        for (replica, count) in per_replica {
            assert!((850..1150).contains(&count), "{replica}: {count} of 3000");
        }
    }

    #[test]
    fn a_replica_leaving_or_joining_moves_only_its_own_groups() {
        let before = owners_of("a", &["a", "b", "c"]);
        let without_c = owners_of("a", &["a", "b"]);
        let with_d = owners_of("a", &["a", "b", "c", "d"]);
        let (mut moved_out, mut moved_in) = (0, 0);
        for group in 0..3000 {
            let key = format!("rabbitmq|http://host-{group}");
            let owner = &before.owner(&key).identity;
            if owner != "c" {
                assert_eq!(&without_c.owner(&key).identity, owner, "{key} moved");
            } else {
                moved_out += 1;
            }
            let new = &with_d.owner(&key).identity;
            if new != owner {
                assert_eq!(new, "d", "{key} moved between stayers");
                moved_in += 1;
            }
        }
        assert!(moved_out > 800 && moved_in > 600, "{moved_out} {moved_in}");
    }

    #[test]
    fn until_the_live_set_is_known_a_replica_polls_everything() {
        let alone = Owners::alone(member("b"));
        assert!(alone.is_mine("kafka|anything"));
        // Known, it is live to itself even when its own Lease is missing from the list.
        let known = Owners::known(member("b"), vec![member("a")]);
        assert_eq!(known.members().len(), 2);
        assert!(known.is_known());
    }
}
