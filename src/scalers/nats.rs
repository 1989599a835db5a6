//! nats scaler: to be written.
