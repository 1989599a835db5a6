//! prometheus scaler: to be written.
