//! Kubernetes Events about IstioInstalls (events.k8s.io/v1).
//!
//! A repeat of the same event within a few minutes becomes a series on the first Event (count and
//! last time), as `kubectl events` expects. kube's `Recorder` does that too, but it counts an
//! event as a repeat when the reason matches, whatever the note says, so "RollingOut: base: …"
//! followed by "RollingOut: pilot: …", or an upgrade to 1.24.0 followed by one to 1.24.6, would
//! all read like the first. Here a repeat has the same type, reason and note.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::HashMap;

/// How long an event counts as a repeat of an earlier identical one.
const REPEAT_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// events.k8s.io caps a note at 1 KB.
const NOTE_LIMIT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    regarding: (Option<String>, Option<String>, Option<String>),
    type_: EventType,
    reason: String,
    note: String,
}

pub struct EventWriter {
    client: Client,
    controller: String,
    instance: String,
    recent: std::sync::Mutex<HashMap<Key, Event>>,
}

impl EventWriter {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> EventWriter {
        EventWriter {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            recent: Default::default(),
        }
    }

    /// Writes an event about `regarding`: a new Event, or one more of a recent identical one.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let mut end = note.len().min(NOTE_LIMIT);
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        let note = &note[..end];
        let now = Timestamp::now();
        let key = Key {
            regarding: (
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            type_,
            reason: reason.to_string(),
            note: note.to_string(),
        };
        // The lock is not held across the API call: one slow write must not hold up the others.
        let earlier = {
            // A poisoned lock only means a panic elsewhere mid-update of this cache of recent
            // Events; its entries are still whole, so carry on with them.
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            recent.retain(|_, e| last_seen(e).is_some_and(|t| t + REPEAT_WINDOW > now));
            recent.get(&key).cloned()
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let event = match earlier {
            Some(mut event) => {
                event.series = Some(EventSeries {
                    count: event.series.as_ref().map_or(2, |s| s.count + 1),
                    last_observed_time: MicroTime(now),
                });
                let patch = serde_json::json!({"series": event.series});
                api.patch(
                    event.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
                event
            }
            None => {
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(format!(
                            "{}.{:x}",
                            regarding.name.as_deref().unwrap_or(&self.controller),
                            now.as_nanosecond()
                        )),
                        namespace: Some(namespace.to_string()),
                        ..Default::default()
                    },
                    event_time: Some(MicroTime(now)),
                    type_: Some(format!("{type_:?}")),
                    reason: Some(reason.to_string()),
                    action: Some(action.to_string()),
                    note: Some(note.to_string()),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &event).await?
            }
        };
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, event);
        Ok(())
    }
}

fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| t.0))
}
