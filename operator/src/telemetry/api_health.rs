//! How the API server has been answering: consecutive failures (429, 5xx, no answer) per request
//! path, so that a fault that lasts shows in the install's status and in `/readyz` instead of only
//! in the logs. Fed by the client layer (`crate::client`), which sees every attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one request attempt told us about the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It answered (any status but 429 and 5xx: a 404 or 409 is the server working).
    Answered,
    /// 429: API Priority and Fairness (or a max-in-flight limit) turned the request away.
    Throttled,
    /// 5xx.
    ServerError(u16),
    /// No answer: refused, reset, timed out.
    Unreachable(String),
    /// Any other status that is not a success, where only success counts (watches: a 403 or
    /// 404 means the watch does not work).
    Status(u16),
}

impl Answer {
    pub fn from_status(code: u16) -> Answer {
        match code {
            429 => Answer::Throttled,
            500..=599 => Answer::ServerError(code),
            _ => Answer::Answered,
        }
    }

    /// For watches: anything but a 2xx is a failure.
    pub fn from_watch_status(code: u16) -> Answer {
        match code {
            200..=299 => Answer::Answered,
            429 | 500..=599 => Answer::from_status(code),
            _ => Answer::Status(code),
        }
    }

    fn describe(&self) -> String {
        match self {
            Answer::Answered => "answered".into(),
            Answer::Throttled => {
                "429 Too Many Requests (throttled by API Priority and Fairness)".into()
            }
            Answer::ServerError(code) => format!("HTTP {code} from the API server"),
            Answer::Unreachable(why) => format!("no answer ({why})"),
            Answer::Status(code) => format!("HTTP {code}"),
        }
    }
}

/// A path not tried again for this long no longer counts as failing (nothing asks for it).
const STALE_AFTER: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
struct Failing {
    since: Instant,
    last_at: Instant,
    count: u64,
    last: String,
}

/// Consecutive failures, per request path (the path without its query: one resource or one
/// collection). Cheap to clone; all clones share the record.
#[derive(Clone, Default)]
pub struct ApiHealth(Arc<Mutex<HashMap<String, Failing>>>);

/// A fault that has lasted: where, for how long, how many attempts, and the last answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub what: String,
    pub for_: Duration,
    pub attempts: u64,
    pub last: String,
}

impl Fault {
    /// Whether the last answer was 429 (the API server asks us to slow down).
    pub fn throttled(&self) -> bool {
        self.last.starts_with("429")
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requests to the API server have failed for {} s ({} attempts in a row; last: {} for {})",
            self.for_.as_secs(),
            self.attempts,
            self.last,
            self.what
        )
    }
}

impl ApiHealth {
    /// Records one attempt's answer for `what` (e.g. `PATCH /apis/apps/v1/.../deployments/istiod`).
    pub fn record(&self, what: &str, answer: Answer) {
        self.record_at(what, answer, Instant::now())
    }

    fn record_at(&self, what: &str, answer: Answer, now: Instant) {
        // A poisoned lock only means another thread panicked mid-update of this map: the map
        // is still a map, so keep using it.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if answer == Answer::Answered {
            map.remove(what);
            return;
        }
        let entry = map.entry(what.to_string()).or_insert(Failing {
            since: now,
            last_at: now,
            count: 0,
            last: String::new(),
        });
        entry.count = entry.count.saturating_add(1);
        entry.last_at = now;
        entry.last = answer.describe();
    }

    /// The oldest fault that has lasted at least `longer_than`, if any.
    pub fn lasting_fault(&self, longer_than: Duration) -> Option<Fault> {
        self.lasting_fault_at(longer_than, Instant::now())
    }

    fn lasting_fault_at(&self, longer_than: Duration, now: Instant) -> Option<Fault> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(what, f)| (what, f, now.saturating_duration_since(f.since)))
            .filter(|(_, f, age)| {
                *age >= longer_than && now.saturating_duration_since(f.last_at) <= STALE_AFTER
            })
            .max_by_key(|(_, _, age)| *age)
            .map(|(what, f, age)| Fault {
                what: what.clone(),
                for_: age,
                attempts: f.count,
                last: f.last.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_shows_once_it_has_lasted_and_clears_on_an_answer() {
        let h = ApiHealth::default();
        let t0 = Instant::now();
        let path = "PATCH /apis/apps/v1/namespaces/istio-system/deployments/istiod";
        h.record_at(path, Answer::Throttled, t0);
        h.record_at(path, Answer::Throttled, t0 + Duration::from_secs(5));
        assert_eq!(
            h.lasting_fault_at(Duration::from_secs(15), t0 + Duration::from_secs(10)),
            None,
            "not yet lasting"
        );
        let fault = h
            .lasting_fault_at(Duration::from_secs(15), t0 + Duration::from_secs(20))
            .expect("lasting");
        assert_eq!(fault.attempts, 2);
        assert_eq!(fault.for_, Duration::from_secs(20));
        let text = fault.to_string();
        assert!(text.contains("429") && text.contains("istiod"), "{text}");
        h.record_at(path, Answer::Answered, t0 + Duration::from_secs(21));
        assert_eq!(
            h.lasting_fault_at(Duration::ZERO, t0 + Duration::from_secs(22)),
            None
        );
    }

    #[test]
    fn paths_are_independent_and_the_oldest_fault_is_reported() {
        let h = ApiHealth::default();
        let t0 = Instant::now();
        h.record_at("GET /a", Answer::ServerError(503), t0);
        h.record_at(
            "GET /b",
            Answer::Unreachable("connection refused".into()),
            t0 + Duration::from_secs(30),
        );
        h.record_at("GET /c", Answer::Answered, t0 + Duration::from_secs(31));
        let fault = h
            .lasting_fault_at(Duration::from_secs(60), t0 + Duration::from_secs(70))
            .expect("GET /a has failed for 70 s");
        assert_eq!(fault.what, "GET /a");
        assert!(fault.last.contains("503"), "{}", fault.last);
        assert_eq!(Answer::from_status(404), Answer::Answered);
        assert_eq!(Answer::from_status(409), Answer::Answered);
        assert_eq!(Answer::from_status(504), Answer::ServerError(504));
        assert_eq!(Answer::from_watch_status(403), Answer::Status(403));
        assert_eq!(Answer::from_watch_status(200), Answer::Answered);
    }

    #[test]
    fn a_path_not_tried_again_stops_counting() {
        let h = ApiHealth::default();
        let t0 = Instant::now();
        h.record_at("GET /a", Answer::Throttled, t0);
        h.record_at("GET /a", Answer::Throttled, t0 + Duration::from_secs(20));
        assert!(
            h.lasting_fault_at(Duration::from_secs(15), t0 + Duration::from_secs(100))
                .is_some()
        );
        assert!(
            h.lasting_fault_at(Duration::from_secs(15), t0 + Duration::from_secs(200))
                .is_none()
        );
    }
}
