//! Consumer-group lag arithmetic with KEDA's semantics (pkg/scalers/kafka_scaler.go,
//! `getLagForPartition` and `getTotalLag`), kept free of I/O so every rule is unit-tested.
//! Two deliberate differences (see the module doc of [`super`]): the log start offset bounds
//! what `earliest` counts, and a commit outside the log is an invalid offset.

/// What to assume for a partition the group has never committed (KEDA's `offsetResetPolicy`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OffsetResetPolicy {
    /// A new consumer starts at the end: lag 1 per partition, enough to start one consumer.
    #[default]
    Latest,
    /// A new consumer reads from the log start: every record still in the partition is lag.
    Earliest,
}

/// The options of a trigger that shape its lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LagRules {
    pub lag_threshold: u64,
    pub offset_reset_policy: OffsetResetPolicy,
    pub scale_to_zero_on_invalid_offset: bool,
    pub allow_idle_consumers: bool,
    pub limit_to_partitions_with_lag: bool,
    pub ensure_even_distribution_of_partitions: bool,
}

/// Offsets of one partition at one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Log start offset (the first record still kept: retention and DeleteRecords move it).
    pub log_start: i64,
    /// Log-end offset (the offset the next produced record gets).
    pub end: i64,
    /// The group's committed offset; `None` when nothing was committed (Kafka's -1).
    pub committed: Option<i64>,
    /// The committed offset is the same as at the previous poll (for `excludePersistentLag`).
    pub persistent: bool,
}

/// Lag of one partition: `(lag for the scaling metric, lag for activation)`.
///
/// The two differ only for persistent lag: a partition whose consumer is stuck (the committed
/// offset did not move since the previous poll) still activates the target but adds nothing to
/// the metric, so the HPA does not add replicas that could not help.
pub fn partition_lag(
    offsets: PartitionOffsets,
    rules: &LagRules,
    exclude_persistent: bool,
) -> (i64, i64) {
    // A commit outside the log (beyond the end after a topic was recreated or truncated, or
    // below the log start after retention) is invalid: a consumer resets it by its policy.
    let valid = offsets
        .committed
        .filter(|c| (offsets.log_start..=offsets.end).contains(c));
    let Some(committed) = valid else {
        let lag = match (
            rules.scale_to_zero_on_invalid_offset,
            rules.offset_reset_policy,
        ) {
            (true, _) => 0,
            (false, OffsetResetPolicy::Latest) => 1,
            // The records a new consumer would read: from the log start, not from offset 0.
            (false, OffsetResetPolicy::Earliest) => (offsets.end - offsets.log_start).max(0),
        };
        return (lag, lag);
    };
    let lag = offsets.end - committed;
    if exclude_persistent && offsets.persistent {
        (0, lag)
    } else {
        (lag, lag)
    }
}

/// A trigger's lag over all its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TotalLag {
    /// The value served to the HPA: summed lag after the partition cap.
    pub metric: i64,
    /// Summed lag before the cap.
    pub uncapped: i64,
    /// Summed lag including persistent lag: what activation compares.
    pub with_persistent: i64,
    pub partitions: usize,
    pub partitions_with_lag: usize,
}

/// Sums per-partition lags and applies KEDA's cap, so an AverageValue HPA with target
/// `lag_threshold` never asks for more consumers than there are partitions (or partitions
/// with lag), which would sit idle.
pub fn total_lag(lags: impl IntoIterator<Item = (i64, i64)>, rules: &LagRules) -> TotalLag {
    let mut total = TotalLag::default();
    for (lag, with_persistent) in lags {
        total.uncapped = total.uncapped.saturating_add(lag);
        total.with_persistent = total.with_persistent.saturating_add(with_persistent);
        total.partitions += 1;
        if lag > 0 {
            total.partitions_with_lag += 1;
        }
    }
    total.metric = total.uncapped;
    let threshold = rules.lag_threshold.max(1) as i64;
    if !rules.allow_idle_consumers
        || rules.limit_to_partitions_with_lag
        || rules.ensure_even_distribution_of_partitions
    {
        let upper_bound = if rules.limit_to_partitions_with_lag {
            total.partitions_with_lag
        } else {
            total.partitions
        } as i64;
        if rules.ensure_even_distribution_of_partitions {
            let factor = smallest_factor_covering(total.partitions as i64, total.metric, threshold);
            total.metric = factor.saturating_mul(threshold);
        }
        // Integer division, as KEDA: the cap applies only when lag/threshold exceeds the bound.
        if total.metric / threshold > upper_bound {
            total.metric = upper_bound.saturating_mul(threshold);
        }
    }
    total
}

/// The smallest factor `f` of `partitions` with `f * threshold >= lag`, or `partitions`.
fn smallest_factor_covering(partitions: i64, lag: i64, threshold: i64) -> i64 {
    (1..=partitions)
        .filter(|f| partitions % f == 0)
        .find(|f| f.saturating_mul(threshold) >= lag)
        .unwrap_or(partitions)
}

/// Parses KEDA's `partitionLimitation`: `"1,2,10-12"`, ranges inclusive.
pub fn parse_partition_limitation(text: &str) -> Result<Vec<i32>, String> {
    let mut partitions = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<i32>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| format!("{s:?} is not a partition number"))
        };
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (parse(from)?, parse(to)?);
                if from > to {
                    return Err(format!("range {part:?} is reversed"));
                }
                partitions.extend(from..=to);
            }
            None => partitions.push(parse(part)?),
        }
    }
    if partitions.is_empty() {
        return Err("names no partition".into());
    }
    partitions.sort_unstable();
    partitions.dedup();
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(threshold: u64) -> LagRules {
        LagRules {
            lag_threshold: threshold,
            ..Default::default()
        }
    }

    fn offsets(end: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            log_start: 0,
            end,
            committed,
            persistent: false,
        }
    }

    fn moved(log_start: i64, end: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            log_start,
            ..offsets(end, committed)
        }
    }

    #[test]
    fn partition_lag_follows_keda() {
        let latest = rules(10);
        let earliest = LagRules {
            offset_reset_policy: OffsetResetPolicy::Earliest,
            ..latest
        };
        let zero = LagRules {
            scale_to_zero_on_invalid_offset: true,
            ..latest
        };
        let zero_earliest = LagRules {
            scale_to_zero_on_invalid_offset: true,
            ..earliest
        };
        let cases = [
            (offsets(100, Some(40)), latest, (60, 60)),
            (offsets(100, Some(100)), latest, (0, 0)),
            (offsets(100, None), latest, (1, 1)),
            (offsets(0, None), latest, (1, 1)),
            (offsets(100, None), earliest, (100, 100)),
            (offsets(100, None), zero, (0, 0)),
            (offsets(100, None), zero_earliest, (0, 0)),
            // Differences from KEDA: the log start bounds `earliest` (records 0..50 deleted)...
            (moved(50, 141, None), earliest, (91, 91)),
            (moved(50, 141, None), latest, (1, 1)),
            (moved(50, 141, None), zero_earliest, (0, 0)),
            // ...and a commit outside the log is invalid (KEDA: beyond the end reads 0, below
            // the start reads deleted records as lag).
            (offsets(5, Some(9)), latest, (1, 1)),
            (offsets(5, Some(9)), earliest, (5, 5)),
            (offsets(5, Some(9)), zero, (0, 0)),
            (moved(50, 141, Some(20)), earliest, (91, 91)),
            (moved(50, 141, Some(20)), latest, (1, 1)),
            (moved(50, 141, Some(50)), latest, (91, 91)),
            (moved(50, 141, Some(141)), earliest, (0, 0)),
            (moved(141, 141, None), earliest, (0, 0)),
        ];
        for (offsets, rules, want) in cases {
            assert_eq!(
                partition_lag(offsets, &rules, false),
                want,
                "{offsets:?} {rules:?}"
            );
        }
    }

    #[test]
    fn persistent_lag_counts_only_for_activation() {
        let stuck = PartitionOffsets {
            log_start: 0,
            end: 50,
            committed: Some(20),
            persistent: true,
        };
        assert_eq!(partition_lag(stuck, &rules(10), true), (0, 30));
        assert_eq!(partition_lag(stuck, &rules(10), false), (30, 30));
    }

    /// The worked examples of KEDA's cap (peers-detail.md 8.6).
    #[test]
    fn cap_matches_keda_examples() {
        let spread = |n: usize, total: i64| {
            (0..n)
                .map(move |i| {
                    let lag = total / n as i64 + i64::from((i as i64) < total % n as i64);
                    (lag, lag)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(total_lag(spread(3, 500), &rules(10)).metric, 30);
        let idle = LagRules {
            allow_idle_consumers: true,
            ..rules(10)
        };
        assert_eq!(total_lag(spread(3, 500), &idle).metric, 500);
        let even = LagRules {
            ensure_even_distribution_of_partitions: true,
            ..rules(10)
        };
        assert_eq!(total_lag(spread(12, 45), &even).metric, 60);
        let with_lag = LagRules {
            limit_to_partitions_with_lag: true,
            ..rules(10)
        };
        let mut four_lagging = spread(4, 500);
        four_lagging.extend([(0, 0); 8]);
        let total = total_lag(four_lagging, &with_lag);
        assert_eq!(
            (total.metric, total.partitions, total.partitions_with_lag),
            (40, 12, 4)
        );
        // Integer division lets the value exceed the bound by less than one threshold.
        assert_eq!(total_lag(spread(3, 39), &rules(10)).metric, 39);
        assert_eq!(total_lag(spread(3, 40), &rules(10)).metric, 30);
        assert_eq!(total_lag(spread(3, 500), &rules(10)).metric, 30);
    }

    #[test]
    fn huge_lags_saturate_instead_of_wrapping() {
        let idle = LagRules {
            allow_idle_consumers: true,
            ..rules(1)
        };
        let total = total_lag([(i64::MAX, i64::MAX), (5, 5)], &idle);
        assert_eq!(total.metric, i64::MAX);
    }

    #[test]
    fn partition_limitation_parses_lists_and_ranges() {
        assert_eq!(
            parse_partition_limitation("1,2,10-12").unwrap(),
            vec![1, 2, 10, 11, 12]
        );
        assert_eq!(
            parse_partition_limitation(" 3 , 1-2,2").unwrap(),
            vec![1, 2, 3]
        );
        for bad in ["", "a", "3-1", "-1", "1,,x", "1-"] {
            assert!(
                parse_partition_limitation(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
