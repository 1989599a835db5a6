//! KEDA's trigger `metadata` (a map of strings) taken apart one parameter at a time: each
//! broker module takes the parameters it knows and writes spillway's typed field, and whatever
//! is left at the end is refused by name, so no parameter is ever dropped without a word.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One trigger's `metadata`, with the reasons it cannot be carried over and the differences
/// the import makes, collected as the broker module reads it.
#[derive(Debug)]
pub(super) struct Metadata {
    /// `triggers[<index>]`, for messages.
    at: String,
    values: BTreeMap<String, String>,
    pub(super) reasons: Vec<String>,
    pub(super) differences: Vec<String>,
}

impl Metadata {
    /// The metadata of the trigger at `at` (`triggers[0]`). KEDA's schema holds strings only;
    /// numbers and booleans written without quotes are taken as their text, anything else is
    /// refused.
    pub(super) fn new(at: &str, metadata: Option<&Value>) -> Self {
        let mut this = Self {
            at: at.to_owned(),
            values: BTreeMap::new(),
            reasons: Vec::new(),
            differences: Vec::new(),
        };
        match metadata {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => continue,
                        other => {
                            this.refuse(key, format!("is {}, not a string", kind_of(other)));
                            continue;
                        }
                    };
                    this.values.insert(key.clone(), text);
                }
            }
            Some(other) => this.reasons.push(format!(
                "{at}.metadata: is {}, not a map of strings",
                kind_of(other)
            )),
        }
        this
    }

    /// Records why parameter `key` cannot be carried over.
    pub(super) fn refuse(&mut self, key: &str, why: impl std::fmt::Display) {
        self.reasons
            .push(format!("{}.metadata.{key}: {why}", self.at));
    }

    /// Records a difference the import makes for parameter `key`.
    pub(super) fn differs(&mut self, key: &str, what: impl std::fmt::Display) {
        self.differences
            .push(format!("{}.metadata.{key}: {what}", self.at));
    }

    /// Takes `key`'s text; an empty value is unset, as KEDA's typed metadata reads it.
    pub(super) fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key).filter(|v| !v.trim().is_empty())
    }

    /// Takes `key` as a string into `out[key]`; returns it.
    pub(super) fn string(&mut self, out: &mut Map<String, Value>, key: &str) -> Option<String> {
        let value = self.take(key)?;
        out.insert(key.to_owned(), Value::String(value.clone()));
        Some(value)
    }

    /// Takes `key`, which KEDA requires, into `out[key]`.
    pub(super) fn required(&mut self, out: &mut Map<String, Value>, key: &str) -> Option<String> {
        let value = self.string(out, key);
        if value.is_none() {
            self.refuse(key, "is required (by KEDA too)");
        }
        value
    }

    /// Takes `key` as a whole number into `out[key]`, or writes `default` (KEDA's) when unset.
    pub(super) fn integer(
        &mut self,
        out: &mut Map<String, Value>,
        key: &str,
        default: Option<u64>,
    ) -> Option<u64> {
        let value = match self.take(key) {
            Some(text) => match text.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.refuse(key, format!("{text:?} is not a whole number"));
                    return None;
                }
            },
            None => default,
        };
        if let Some(n) = value {
            out.insert(key.to_owned(), n.into());
        }
        value
    }

    /// Whether `key` is set (not empty).
    pub(super) fn has(&self, key: &str) -> bool {
        self.values.get(key).is_some_and(|v| !v.trim().is_empty())
    }

    /// Takes `key`, a whole number KEDA requires, into `out[key]`.
    pub(super) fn required_integer(
        &mut self,
        out: &mut Map<String, Value>,
        key: &str,
    ) -> Option<u64> {
        if !self.has(key) {
            self.values.remove(key);
            self.refuse(key, "is required (by KEDA too)");
            return None;
        }
        self.integer(out, key, None)
    }

    /// Takes `key`, a number KEDA requires, into `out[key]`.
    pub(super) fn required_number(
        &mut self,
        out: &mut Map<String, Value>,
        key: &str,
    ) -> Option<f64> {
        if !self.has(key) {
            self.values.remove(key);
            self.refuse(key, "is required (by KEDA too)");
            return None;
        }
        self.number(out, key, None)
    }

    /// Takes `key` as a number into `out[key]`, or writes `default` (KEDA's) when unset.
    pub(super) fn number(
        &mut self,
        out: &mut Map<String, Value>,
        key: &str,
        default: Option<f64>,
    ) -> Option<f64> {
        let value = match self.take(key) {
            Some(text) => match text.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Some(n),
                _ => {
                    self.refuse(key, format!("{text:?} is not a number"));
                    return None;
                }
            },
            None => default,
        };
        if let Some(n) = value {
            out.insert(key.to_owned(), number(n));
        }
        value
    }

    /// Takes `key` as a boolean (Go's `strconv.ParseBool`, as KEDA reads it) into `out[key]`.
    pub(super) fn boolean(&mut self, out: &mut Map<String, Value>, key: &str) -> Option<bool> {
        let text = self.take(key)?;
        let value = match text.trim() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => {
                self.refuse(key, format!("{text:?} is not a boolean"));
                return None;
            }
        };
        out.insert(key.to_owned(), Value::Bool(value));
        Some(value)
    }

    /// Takes `key` as one of `allowed` (compared as written) into `out[key]`.
    pub(super) fn one_of(
        &mut self,
        out: &mut Map<String, Value>,
        key: &str,
        allowed: &[&str],
    ) -> Option<String> {
        let text = self.take(key)?;
        if allowed.contains(&text.trim()) {
            out.insert(key.to_owned(), Value::String(text.trim().to_owned()));
            Some(text.trim().to_owned())
        } else {
            self.refuse(
                key,
                format!(
                    "{text:?} is not supported by spillway (it takes {})",
                    allowed.join(", ")
                ),
            );
            None
        }
    }

    /// Refuses every parameter nobody took: KEDA's `*FromEnv` parameters with their own reason.
    pub(super) fn finish(&mut self, broker: &str) {
        let left = std::mem::take(&mut self.values);
        for key in left.keys() {
            if key.ends_with("FromEnv") {
                self.refuse(
                    key,
                    "reads the scaled workload's container environment, which spillway never sees: write the value, or a Secret through a TriggerAuthentication",
                );
            } else {
                self.refuse(
                    key,
                    format!("is not a parameter spillway's {broker} trigger takes"),
                );
            }
        }
    }
}

/// A JSON number for `n`: an integer when it is one, so `20` is written `20`, not `20.0`.
pub(super) fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        Value::from(n)
    }
}

/// What a JSON value is, for messages.
pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Runs a broker's `map` on `metadata` as the first trigger: what it wrote, why it refused,
/// and what it noted as differing (for the mappings' unit tests).
#[cfg(test)]
pub(super) fn map_trigger(
    map: fn(&mut Metadata) -> Map<String, Value>,
    metadata: Value,
) -> (Value, Vec<String>, Vec<String>) {
    let mut md = Metadata::new("triggers[0]", Some(&metadata));
    let out = map(&mut md);
    (Value::Object(out), md.reasons, md.differences)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_are_read_as_keda_reads_strings_and_the_rest_is_refused_by_name() {
        let given = json!({"a": "5", "b": 7, "c": true, "d": {"x": 1}, "e": "", "hostFromEnv": "H", "odd": "1"});
        let mut md = Metadata::new("triggers[0]", Some(&given));
        let mut out = Map::new();
        assert_eq!(md.integer(&mut out, "a", None), Some(5));
        assert_eq!(md.integer(&mut out, "b", None), Some(7));
        assert_eq!(md.boolean(&mut out, "c"), Some(true));
        // Empty is unset: the default applies.
        assert_eq!(md.integer(&mut out, "e", Some(10)), Some(10));
        md.finish("kafka");
        assert_eq!(
            out,
            json!({"a": 5, "b": 7, "c": true, "e": 10})
                .as_object()
                .unwrap()
                .clone()
        );
        assert_eq!(
            md.reasons,
            [
                "triggers[0].metadata.d: is a map, not a string",
                "triggers[0].metadata.hostFromEnv: reads the scaled workload's container environment, which spillway never sees: write the value, or a Secret through a TriggerAuthentication",
                "triggers[0].metadata.odd: is not a parameter spillway's kafka trigger takes",
            ]
        );
    }

    #[test]
    fn bad_numbers_booleans_and_choices_are_refused_with_the_value() {
        let given = json!({"n": "ten", "f": "1.5.2", "b": "yes", "c": "gssapi"});
        let mut md = Metadata::new("triggers[1]", Some(&given));
        let mut out = Map::new();
        assert_eq!(md.integer(&mut out, "n", Some(10)), None);
        assert_eq!(md.number(&mut out, "f", None), None);
        assert_eq!(md.boolean(&mut out, "b"), None);
        assert_eq!(md.one_of(&mut out, "c", &["none", "plaintext"]), None);
        assert!(out.is_empty());
        assert_eq!(md.reasons.len(), 4);
        assert!(
            md.reasons[3]
                .contains("\"gssapi\" is not supported by spillway (it takes none, plaintext)")
        );
    }

    #[test]
    fn whole_numbers_are_written_as_integers() {
        assert_eq!(number(20.0), json!(20));
        assert_eq!(number(100.5), json!(100.5));
    }
}
