//! A trigger's value and activity from the figures RabbitMQ gave: one queue's, or several
//! regex-matched queues' combined by the trigger's operation.

use super::trigger::{Mode, Operation, RabbitMqTrigger};
use crate::scalers::{ActivationInput, BacklogSample, Reading, TriggerParams};

/// The figures of one queue (or of several, combined) the management API reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct QueueFigures {
    pub(super) messages: f64,
    pub(super) messages_ready: f64,
    pub(super) messages_unacknowledged: f64,
    /// Messages per second; `None` when RabbitMQ reports no rate (no `message_stats`: the queue
    /// has seen no traffic yet, or statistics are off). Never read as 0.
    pub(super) publish_rate: Option<f64>,
    pub(super) deliver_rate: Option<f64>,
}

/// Combines the figures of regex-matched queues, each figure on its own (KEDA's
/// `getComposedQueue`); `None` when nothing matched. A rate some queue does not report is not
/// reported for the combination either: the sum or maximum of the others would be a guess.
pub(super) fn aggregate(operation: Operation, queues: &[QueueFigures]) -> Option<QueueFigures> {
    if queues.is_empty() {
        return None;
    }
    let combine_values = |values: Vec<f64>| match operation {
        Operation::Sum => values.iter().sum(),
        Operation::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Operation::Avg => values.iter().sum::<f64>() / queues.len() as f64,
    };
    let combine =
        |figure: fn(&QueueFigures) -> f64| combine_values(queues.iter().map(figure).collect());
    let combine_rate = |rate: fn(&QueueFigures) -> Option<f64>| {
        queues
            .iter()
            .map(rate)
            .collect::<Option<Vec<f64>>>()
            .map(combine_values)
    };
    Some(QueueFigures {
        messages: combine(|q| q.messages),
        messages_ready: combine(|q| q.messages_ready),
        messages_unacknowledged: combine(|q| q.messages_unacknowledged),
        publish_rate: combine_rate(|q| q.publish_rate),
        deliver_rate: combine_rate(|q| q.deliver_rate),
    })
}

/// The reading of an HTTP trigger from its queue's (or queues') figures. A MessageRate trigger
/// whose publish rate RabbitMQ does not report has no reading (the error says why); a rate
/// missing beside the value leaves its extra metric out rather than serving 0.
pub(super) fn reading_from_figures(
    trigger: &RabbitMqTrigger,
    figures: &QueueFigures,
) -> Result<Reading, String> {
    let depth = if trigger.exclude_unacknowledged {
        figures.messages_ready
    } else {
        figures.messages
    };
    let value = match trigger.mode {
        Mode::QueueLength => depth,
        Mode::MessageRate => figures.publish_rate.ok_or(
            "mode MessageRate: RabbitMQ reports no publish rate (no message_stats: the queue \
             has seen no traffic yet, or the management plugin collects no rates)",
        )?,
    };
    let active = trigger.is_active(ActivationInput {
        value,
        backlog: Some(depth),
    });
    let mut reading = Reading::new(value, active);
    match trigger.mode {
        Mode::QueueLength => {
            if let Some(rate) = figures.publish_rate {
                reading = reading.with_extra("publish-rate", rate);
            }
        }
        Mode::MessageRate => reading = reading.with_extra("messages", depth),
    }
    if let Some(rate) = figures.deliver_rate {
        reading = reading.with_extra("deliver-rate", rate);
    }
    Ok(reading)
}

/// The reading of an AMQP trigger from its queue's ready messages, all a passive declare
/// tells.
pub(super) fn reading_from_ready(
    trigger: &RabbitMqTrigger,
    vhost: &str,
    queue: &str,
    ready: f64,
) -> Reading {
    let active = trigger.is_active(ActivationInput {
        value: ready,
        backlog: Some(ready),
    });
    Reading::new(ready, active).with_backlog(vec![BacklogSample::RabbitMqQueue {
        vhost: vhost.to_owned(),
        queue: queue.to_owned(),
        messages: None,
        messages_ready: ready,
        messages_unacknowledged: None,
        publish_rate: None,
        deliver_rate: None,
    }])
}

#[cfg(test)]
mod tests {
    use super::super::test_triggers::{trigger, with};
    use super::*;
    use crate::scalers::Trigger;

    fn figures(messages: f64, ready: f64, publish: f64, deliver: f64) -> QueueFigures {
        QueueFigures {
            messages,
            messages_ready: ready,
            messages_unacknowledged: messages - ready,
            publish_rate: Some(publish),
            deliver_rate: Some(deliver),
        }
    }

    fn without_rates(messages: f64) -> QueueFigures {
        QueueFigures {
            publish_rate: None,
            deliver_rate: None,
            ..figures(messages, messages, 0.0, 0.0)
        }
    }

    #[test]
    fn aggregation_combines_each_figure_on_its_own() {
        let queues = [
            figures(10.0, 4.0, 1.0, 0.0),
            figures(2.0, 2.0, 5.0, 3.0),
            figures(0.0, 0.0, 0.0, 0.5),
        ];
        let sum = aggregate(Operation::Sum, &queues).unwrap();
        assert_eq!(sum, figures(12.0, 6.0, 6.0, 3.5));
        let max = aggregate(Operation::Max, &queues).unwrap();
        // Max is per figure: messages from the first queue, publish rate from the second.
        assert_eq!(max, figures(10.0, 4.0, 5.0, 3.0));
        let avg = aggregate(Operation::Avg, &queues).unwrap();
        assert_eq!(avg.messages, 4.0);
        assert_eq!(avg.publish_rate, Some(2.0));
        assert!((avg.deliver_rate.unwrap() - 3.5 / 3.0).abs() < 1e-12);
        assert_eq!(aggregate(Operation::Sum, &[]), None);
    }

    #[test]
    fn a_rate_one_queue_lacks_is_lacking_in_the_combination() {
        let queues = [figures(10.0, 4.0, 1.0, 2.0), without_rates(3.0)];
        for operation in [Operation::Sum, Operation::Max, Operation::Avg] {
            let combined = aggregate(operation, &queues).unwrap();
            assert_eq!(
                (combined.publish_rate, combined.deliver_rate),
                (None, None),
                "{operation:?}"
            );
        }
        assert_eq!(aggregate(Operation::Sum, &queues).unwrap().messages, 13.0);
    }

    #[test]
    fn a_missing_rate_is_an_error_in_rate_mode_and_no_extra_otherwise() {
        let t = trigger("http://r/", "q");
        let r = reading_from_figures(&t, &without_rates(7.0)).unwrap();
        assert_eq!((r.value, r.extra.as_slice()), (7.0, &[][..]));

        let rate = with(&t, serde_json::json!({"mode": "MessageRate"}));
        let err = reading_from_figures(&rate, &without_rates(7.0)).unwrap_err();
        assert!(err.contains("no publish rate"), "{err}");
        // A reported rate of 0 is a reading.
        let idle = reading_from_figures(&rate, &figures(0.0, 0.0, 0.0, 0.0)).unwrap();
        assert_eq!(idle.value, 0.0);
    }

    #[test]
    fn readings_follow_mode_and_activation() {
        let t = trigger("http://r/", "q");
        let f = figures(10.0, 4.0, 2.5, 1.5);

        let r = reading_from_figures(&t, &f).unwrap();
        assert_eq!((r.value, r.active), (10.0, true));
        assert_eq!(r.extra, vec![("publish-rate", 2.5), ("deliver-rate", 1.5)]);

        let ready_only = with(
            &t,
            serde_json::json!({"excludeUnacknowledged": true, "activationValue": 4}),
        );
        let r = reading_from_figures(&ready_only, &f).unwrap();
        assert_eq!((r.value, r.active), (4.0, false));

        let rate = with(
            &t,
            serde_json::json!({"mode": "MessageRate", "activationValue": 5}),
        );
        let r = reading_from_figures(&rate, &f).unwrap();
        assert_eq!(r.value, 2.5);
        // Still active: the backlog (10) is above the activation value even if the rate is not.
        assert!(r.active);
        assert_eq!(r.extra, vec![("messages", 10.0), ("deliver-rate", 1.5)]);
        let idle = reading_from_figures(&rate, &figures(1.0, 1.0, 0.0, 0.0)).unwrap();
        assert!(!idle.active);
    }

    #[test]
    fn plan_decides_activity_from_the_value_as_the_scaler_does_but_for_a_message_rate_backlog() {
        let plan = |t: &RabbitMqTrigger, value: f64| {
            Trigger::RabbitMq(t.clone()).is_active(ActivationInput::value_only(value))
        };
        let queue_length = with(
            &trigger("http://r/", "q"),
            serde_json::json!({"activationValue": 4}),
        );
        for f in [
            figures(10.0, 4.0, 2.5, 1.5),
            figures(4.0, 4.0, 9.0, 0.0),
            figures(0.0, 0.0, 0.0, 0.0),
        ] {
            let read = reading_from_figures(&queue_length, &f).unwrap();
            assert_eq!(plan(&queue_length, read.value), read.active, "{f:?}");
        }
        for ready in [0.0, 4.0, 5.0] {
            let read = reading_from_ready(&queue_length, "/", "q", ready);
            assert_eq!(
                plan(&queue_length, read.value),
                read.active,
                "ready {ready}"
            );
        }

        let rate = with(&queue_length, serde_json::json!({"mode": "MessageRate"}));
        // The backlog (messages) at or below the activation value: the rate alone decides.
        for f in [figures(4.0, 4.0, 5.0, 0.0), figures(1.0, 1.0, 4.0, 0.0)] {
            let read = reading_from_figures(&rate, &f).unwrap();
            assert_eq!(plan(&rate, read.value), read.active, "{f:?}");
        }
        // A backlog above it keeps the trigger active whatever the rate. A plan given the rate
        // alone cannot see it; given the backlog too, the rule answers as the scaler did.
        let draining = figures(10.0, 10.0, 0.0, 0.0);
        let read = reading_from_figures(&rate, &draining).unwrap();
        assert!(read.active);
        assert!(!plan(&rate, read.value));
        let with_backlog = ActivationInput {
            value: read.value,
            backlog: Some(draining.messages),
        };
        assert!(Trigger::RabbitMq(rate).is_active(with_backlog));
    }
}
