//! Kafka consumer-group lag.
