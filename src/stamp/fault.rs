//! Faults of the simulated stamp: what an operator, a drill or a test asks the
//! stamp to do wrong, how a control request's JSON becomes a [`Fault`], and the
//! one cell that holds the current fault for the serving path to read.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The longest added delay a fault may ask for. Anything longer is a hang in
/// all but name, and [`Fault::hang`] says that more honestly.
pub const MAX_LATENCY_MS: u64 = 3_600_000;

/// The faults a stamp is currently simulating. `None` means "not set"; when
/// faults are merged (`PUT /fault`, [`Stamp::set_fault`](super::Stamp::set_fault))
/// only the fields that are `Some` replace the current ones, so switching a
/// fault off takes an explicit value (`"health": "ok"`, `"latency_ms": 0`,
/// `"hang": false`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// `fail`: the health endpoint answers 503 with a failing `statefile`
    /// check, like a real stamp whose state file an operator deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthFault>,
    /// The share (0 to 1) of API requests (under `/catalogservice/`) that are
    /// answered 500. Health endpoints are not affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Delay added before every response of the serving listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// `true`: requests are read but not answered until this is cleared (or
    /// the client gives up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang: Option<bool>,
    /// `true`: the serving listener is closed and every serving connection
    /// dropped; clearing it binds the same address again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<bool>,
    /// Which requests `latency_ms` and `hang` act on: `all` (the default)
    /// or `api` only, so the health endpoint stays fast and green while the
    /// API is slow: the gray failure that probes alone cannot see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<FaultScope>,
}

/// The value of [`Fault::scope`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultScope {
    /// Every request of the serving listener.
    #[default]
    All,
    /// API requests (under `/catalogservice/`) only.
    Api,
}

/// The value of [`Fault::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthFault {
    /// The health endpoint reports the stamp unhealthy (503).
    Fail,
    /// The health endpoint reports what the stamp really is: healthy.
    Ok,
}

/// Why a fault was refused. The message names the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The body is not JSON at all.
    #[error("fault body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The body is JSON, but not an object.
    #[error("fault body must be a JSON object such as {{\"health\": \"fail\"}}, got {0}")]
    NotAnObject(String),
    /// A field the stamp does not know.
    #[error(
        "unknown fault field {0:?}; known fields: health, error_rate, latency_ms, hang, down, scope"
    )]
    UnknownField(String),
    /// A known field with a value of the wrong type or shape.
    #[error("fault field {field}: cannot use {value}: {reason}")]
    Field {
        /// The field name, as sent.
        field: String,
        /// The offending value, as JSON.
        value: String,
        /// What serde expected instead.
        reason: String,
    },
    /// `error_rate` outside 0..=1 (or not a number).
    #[error("fault field error_rate must be between 0 and 1, got {0}")]
    ErrorRate(f64),
    /// `latency_ms` above [`MAX_LATENCY_MS`].
    #[error(
        "fault field latency_ms must be at most {MAX_LATENCY_MS}, got {0} (use hang for longer)"
    )]
    Latency(u64),
}

impl Fault {
    /// Parses the body of `PUT /fault`. Each field is decoded on its own so
    /// that an error can name the field and the value that was refused,
    /// which serde's whole-struct messages do not.
    pub fn from_json(body: &[u8]) -> Result<Fault, FaultError> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(FaultError::Json)?;
        let serde_json::Value::Object(fields) = value else {
            return Err(FaultError::NotAnObject(value.to_string()));
        };
        let mut fault = Fault::default();
        for (name, value) in fields {
            match name.as_str() {
                "health" => fault.health = field(&name, value)?,
                "error_rate" => fault.error_rate = field(&name, value)?,
                "latency_ms" => fault.latency_ms = field(&name, value)?,
                "hang" => fault.hang = field(&name, value)?,
                "down" => fault.down = field(&name, value)?,
                "scope" => fault.scope = field(&name, value)?,
                _ => return Err(FaultError::UnknownField(name)),
            }
        }
        fault.validate()?;
        Ok(fault)
    }

    /// Checks the ranges that the types alone do not.
    pub fn validate(&self) -> Result<(), FaultError> {
        if let Some(rate) = self.error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(FaultError::ErrorRate(rate));
        }
        if let Some(ms) = self.latency_ms
            && ms > MAX_LATENCY_MS
        {
            return Err(FaultError::Latency(ms));
        }
        Ok(())
    }

    /// Replaces the fields that `update` sets and keeps the others.
    pub fn merge(&mut self, update: Fault) {
        // Destructured so that a new field cannot be forgotten here.
        let Fault {
            health,
            error_rate,
            latency_ms,
            hang,
            down,
            scope,
        } = update;
        self.health = health.or(self.health);
        self.error_rate = error_rate.or(self.error_rate);
        self.latency_ms = latency_ms.or(self.latency_ms);
        self.hang = hang.or(self.hang);
        self.down = down.or(self.down);
        self.scope = scope.or(self.scope);
    }

    /// Whether the serving listener should be closed.
    pub fn is_down(&self) -> bool {
        self.down == Some(true)
    }

    /// Whether `latency_ms` and `hang` act on a request that is (`is_api`)
    /// or is not an API request.
    pub fn applies_to(&self, is_api: bool) -> bool {
        is_api || self.scope.unwrap_or_default() == FaultScope::All
    }

    /// Whether requests must wait instead of being answered: while hung, and
    /// while down (a request that slipped in as the stamp went down must not
    /// be answered by a stamp that is meant to be dead).
    pub fn holds_requests(&self) -> bool {
        self.hang == Some(true) || self.is_down()
    }

    /// [`Fault::holds_requests`] for one request: an API-scoped hang lets
    /// health requests through; `down` holds every request.
    pub fn holds(&self, is_api: bool) -> bool {
        (self.hang == Some(true) && self.applies_to(is_api)) || self.is_down()
    }

    /// The delay to add to a request that is (`is_api`) or is not an API
    /// request.
    pub fn delay_for(&self, is_api: bool) -> Option<u64> {
        self.latency_ms
            .filter(|&ms| ms > 0 && self.applies_to(is_api))
    }

    /// Whether the health endpoint should report the stamp unhealthy.
    pub fn health_fails(&self) -> bool {
        self.health == Some(HealthFault::Fail)
    }
}

/// Decodes one field's value, naming the field if that fails.
fn field<T: DeserializeOwned>(name: &str, value: serde_json::Value) -> Result<T, FaultError> {
    serde_json::from_value(value.clone()).map_err(|e| FaultError::Field {
        field: name.to_owned(),
        value: value.to_string(),
        reason: e.to_string(),
    })
}

/// The current fault of one stamp.
///
/// A `watch` channel rather than a mutex, because changes must wake someone:
/// hung requests wait for `hang` to clear and the listener supervisor waits
/// for `down` to change. Its internal lock is taken only to copy or replace
/// the value (once per request on the serving path, once per control write),
/// never across an `.await`.
#[derive(Debug)]
pub(crate) struct FaultCell {
    current: watch::Sender<Fault>,
}

impl FaultCell {
    pub(crate) fn new() -> FaultCell {
        FaultCell {
            current: watch::Sender::new(Fault::default()),
        }
    }

    /// A copy of the current fault.
    pub(crate) fn get(&self) -> Fault {
        self.current.borrow().clone()
    }

    /// Merges `update` into the current fault and returns the result.
    pub(crate) fn merge(&self, update: Fault) -> Fault {
        let mut merged = Fault::default();
        self.current.send_modify(|fault| {
            fault.merge(update);
            merged = fault.clone();
        });
        merged
    }

    /// Clears every fault.
    pub(crate) fn clear(&self) {
        self.current.send_replace(Fault::default());
    }

    /// A receiver for code that waits for changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Fault> {
        self.current.subscribe()
    }

    /// Waits while the fault holds this request (hang, down; `is_api`: it
    /// is an API request) and returns the fault that the request is then to
    /// be answered under.
    pub(crate) async fn wait_until_answerable(&self, is_api: bool) -> Fault {
        {
            // Fast path: no subscription when nothing holds requests.
            let fault = self.current.borrow();
            if !fault.holds(is_api) {
                return fault.clone();
            }
        }
        let mut changes = self.subscribe();
        changes
            .wait_for(|fault| !fault.holds(is_api))
            .await
            .expect("the cell owns the sender, so the channel cannot close")
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(body: &str) -> String {
        Fault::from_json(body.as_bytes())
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn parses_every_field() {
        let fault = Fault::from_json(
            br#"{"health":"fail","error_rate":0.25,"latency_ms":40,"hang":false,"down":true,"scope":"api"}"#,
        )
        .unwrap();
        assert_eq!(
            fault,
            Fault {
                health: Some(HealthFault::Fail),
                error_rate: Some(0.25),
                latency_ms: Some(40),
                hang: Some(false),
                down: Some(true),
                scope: Some(FaultScope::Api),
            }
        );
    }

    #[test]
    fn serialized_fault_parses_back() {
        // Guards the hand-written field list in `from_json` against a new
        // field that serde knows and the parser does not.
        let fault = Fault {
            health: Some(HealthFault::Ok),
            error_rate: Some(1.0),
            latency_ms: Some(0),
            hang: Some(true),
            down: Some(false),
            scope: Some(FaultScope::All),
        };
        let json = serde_json::to_vec(&fault).unwrap();
        assert_eq!(Fault::from_json(&json).unwrap(), fault);
    }

    #[test]
    fn empty_fault_serializes_as_empty_object() {
        assert_eq!(serde_json::to_string(&Fault::default()).unwrap(), "{}");
    }

    #[test]
    fn errors_name_field_and_value() {
        let msg = parse_err(r#"{"health":"broken"}"#);
        assert!(
            msg.contains("health") && msg.contains("\"broken\""),
            "{msg}"
        );
        let msg = parse_err(r#"{"latency_ms":-5}"#);
        assert!(msg.contains("latency_ms") && msg.contains("-5"), "{msg}");
        let msg = parse_err(r#"{"error_rate":1.5}"#);
        assert!(msg.contains("error_rate") && msg.contains("1.5"), "{msg}");
        let msg = parse_err(r#"{"latency":5}"#);
        assert!(msg.contains("\"latency\""), "{msg}");
        let msg = parse_err(r#"{"hang":"yes"}"#);
        assert!(msg.contains("hang") && msg.contains("\"yes\""), "{msg}");
    }

    #[test]
    fn refuses_non_objects_and_bad_json() {
        assert!(parse_err("[1]").contains("JSON object"));
        assert!(parse_err("{").contains("not valid JSON"));
    }

    #[test]
    fn validate_bounds() {
        let rate = |r| Fault {
            error_rate: Some(r),
            ..Fault::default()
        };
        assert!(rate(0.0).validate().is_ok());
        assert!(rate(1.0).validate().is_ok());
        assert!(rate(-0.1).validate().is_err());
        assert!(rate(f64::NAN).validate().is_err());
        let latency = Fault {
            latency_ms: Some(MAX_LATENCY_MS + 1),
            ..Fault::default()
        };
        assert!(latency.validate().is_err());
    }

    #[test]
    fn merge_replaces_only_set_fields() {
        let mut fault = Fault {
            health: Some(HealthFault::Fail),
            latency_ms: Some(100),
            ..Fault::default()
        };
        fault.merge(Fault {
            latency_ms: Some(0),
            hang: Some(true),
            ..Fault::default()
        });
        assert_eq!(
            fault,
            Fault {
                health: Some(HealthFault::Fail),
                latency_ms: Some(0),
                hang: Some(true),
                ..Fault::default()
            }
        );
    }

    #[test]
    fn down_and_hang_hold_requests() {
        let with = |hang, down| Fault {
            hang,
            down,
            ..Fault::default()
        };
        assert!(!with(None, None).holds_requests());
        assert!(!with(Some(false), Some(false)).holds_requests());
        assert!(with(Some(true), None).holds_requests());
        assert!(with(None, Some(true)).holds_requests());
    }

    #[test]
    fn api_scope_spares_the_health_endpoint() {
        let fault = Fault::from_json(br#"{"latency_ms":300,"hang":true,"scope":"api"}"#).unwrap();
        assert!(fault.holds(true) && !fault.holds(false));
        assert_eq!(fault.delay_for(true), Some(300));
        assert_eq!(fault.delay_for(false), None);
        let all = Fault::from_json(br#"{"latency_ms":300,"hang":true}"#).unwrap();
        assert!(all.holds(true) && all.holds(false), "all is the default");
        assert_eq!(all.delay_for(false), Some(300));
        let down = Fault {
            down: Some(true),
            scope: Some(FaultScope::Api),
            ..Fault::default()
        };
        assert!(down.holds(false), "down holds every request");
        assert!(parse_err(r#"{"scope":"health"}"#).contains("scope"));
    }

    #[tokio::test]
    async fn held_request_is_released_when_hang_clears() {
        let cell = std::sync::Arc::new(FaultCell::new());
        cell.merge(Fault {
            hang: Some(true),
            latency_ms: Some(3),
            ..Fault::default()
        });
        let waiter = tokio::spawn({
            let cell = cell.clone();
            async move { cell.wait_until_answerable(true).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cell.merge(Fault {
            hang: Some(false),
            ..Fault::default()
        });
        assert_eq!(waiter.await.unwrap().latency_ms, Some(3));
    }
}
