//! rabbitmq scaler: to be written.
