//! The requests this client sends, each with the versions it speaks. The ranges stop below
//! versions that change what a field means for us (OffsetFetch v10 and OffsetCommit v9 name
//! topics by id), and the connection picks the highest version both sides speak.

use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Which of a broker's connections a request goes on. A broker works through one
/// connection's requests one at a time, in order, so a tick's group reads (OffsetFetch) and
/// partition reads (ListOffsets) get a connection each and the broker serves them in parallel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Metadata, coordinators, committed offsets.
    Groups,
    /// Log start and end offsets.
    Partitions,
    /// The second half of a large partition read (see `ClusterClient::list_offsets`), opened
    /// only for leaders of thousands of partitions: the broker reads both halves at once.
    MorePartitions,
}

/// A request with its answer type and the versions this client speaks.
pub trait ReadRequest: Encodable {
    const KEY: ApiKey;
    /// Name used in errors and request counts (Kafka's own API names).
    const NAME: &'static str;
    /// Lowest and highest version this client speaks.
    const VERSIONS: (i16, i16);
    /// The connection it goes on.
    const LANE: Lane = Lane::Groups;
    type Response: Decodable;
}

macro_rules! read_request {
    ($request:ty, $response:ty, $key:ident, $min:literal, $max:literal) => {
        read_request!($request, $response, $key, $min, $max, Groups);
    };
    ($request:ty, $response:ty, $key:ident, $min:literal, $max:literal, $lane:ident) => {
        impl ReadRequest for $request {
            const KEY: ApiKey = ApiKey::$key;
            const NAME: &'static str = stringify!($key);
            const VERSIONS: (i16, i16) = ($min, $max);
            const LANE: Lane = Lane::$lane;
            type Response = $response;
        }
    };
}

read_request!(ApiVersionsRequest, ApiVersionsResponse, ApiVersions, 0, 3);
read_request!(MetadataRequest, MetadataResponse, Metadata, 1, 12);
read_request!(
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    FindCoordinator,
    0,
    5
);
read_request!(OffsetFetchRequest, OffsetFetchResponse, OffsetFetch, 1, 9);
read_request!(
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsets,
    1,
    8,
    Partitions
);
read_request!(
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommit,
    2,
    8
);
read_request!(
    SaslHandshakeRequest,
    SaslHandshakeResponse,
    SaslHandshake,
    1,
    1
);
read_request!(
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslAuthenticate,
    0,
    2
);

/// The version to send: the highest both sides speak, or `None`.
pub fn negotiate(ours: (i16, i16), theirs: (i16, i16)) -> Option<i16> {
    let high = ours.1.min(theirs.1);
    (high >= ours.0.max(theirs.0)).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        // (ours, theirs, chosen)
        let cases = [
            ((1, 9), (0, 9), Some(9)),
            ((1, 9), (0, 10), Some(9)),
            ((1, 9), (0, 7), Some(7)),
            ((1, 9), (0, 0), None),
            ((2, 8), (9, 10), None),
            ((0, 3), (0, 4), Some(3)),
        ];
        for (ours, theirs, chosen) in cases {
            assert_eq!(negotiate(ours, theirs), chosen, "{ours:?} {theirs:?}");
        }
    }
}
