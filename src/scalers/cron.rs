//! cron scaler: to be written.
