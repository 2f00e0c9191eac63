//! Health gates: is a live object ready for the next component to go ahead?

use crate::json::at;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Ready,
    /// Not ready yet; the message says what is awaited.
    Progressing(String),
    /// Will not become ready without a change: a rollout past its progress deadline. The
    /// message is the rollout's own.
    Failed(String),
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// The health of a live object. Kinds without a notion of readiness are ready once they exist.
pub fn health(live: &Value) -> Health {
    let kind = live["kind"].as_str().unwrap_or_default();
    let name = format!(
        "{kind} {}{}",
        at(live, &["metadata", "namespace"])
            .as_str()
            .map(|n| format!("{n}/"))
            .unwrap_or_default(),
        at(live, &["metadata", "name"]).as_str().unwrap_or_default()
    );
    let status = &live["status"];
    let generation = int(at(live, &["metadata", "generation"]));
    let observed = int(&status["observedGeneration"]);
    use crate::kinds::HealthRule;
    let rule = crate::kinds::lookup(kind).map_or(HealthRule::Exists, |k| k.health);
    match rule {
        HealthRule::Established => {
            let established = status["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            if established {
                Health::Ready
            } else {
                Health::Progressing(format!("{name} is not established yet"))
            }
        }
        HealthRule::DeploymentRollout => {
            let deadline_exceeded = status["conditions"].as_array().and_then(|c| {
                c.iter().find(|c| {
                    c["type"] == "Progressing"
                        && c["status"] == "False"
                        && c["reason"] == "ProgressDeadlineExceeded"
                })
            });
            if let Some(c) = deadline_exceeded
                && observed >= generation
            {
                return Health::Failed(format!(
                    "{name} cannot roll out: {}",
                    c["message"].as_str().unwrap_or("ProgressDeadlineExceeded")
                ));
            }
            if observed < generation {
                return Health::Progressing(format!(
                    "{name}: the controller has not seen generation {generation} yet"
                ));
            }
            let want = at(live, &["spec", "replicas"]).as_i64().unwrap_or(1);
            let (updated, available, total) = (
                int(&status["updatedReplicas"]),
                int(&status["availableReplicas"]),
                int(&status["replicas"]),
            );
            if updated < want {
                Health::Progressing(format!("{name}: {updated}/{want} replicas updated"))
            } else if total > updated {
                Health::Progressing(format!(
                    "{name}: {} old replicas still terminating",
                    total - updated
                ))
            } else if available < want {
                Health::Progressing(format!("{name}: {available}/{want} replicas available"))
            } else {
                Health::Ready
            }
        }
        HealthRule::DaemonSetRollout => {
            if observed < generation {
                return Health::Progressing(format!(
                    "{name}: the controller has not seen generation {generation} yet"
                ));
            }
            let desired = int(&status["desiredNumberScheduled"]);
            let (updated, available) = (
                int(&status["updatedNumberScheduled"]),
                int(&status["numberAvailable"]),
            );
            if updated < desired {
                Health::Progressing(format!("{name}: {updated}/{desired} pods updated"))
            } else if available < desired {
                Health::Progressing(format!("{name}: {available}/{desired} pods available"))
            } else {
                Health::Ready
            }
        }
        HealthRule::Programmed => {
            let programmed = status["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Programmed" && c["status"] == "True")
            });
            if programmed {
                Health::Ready
            } else {
                Health::Progressing(format!("{name} is not programmed yet"))
            }
        }
        HealthRule::Exists => Health::Ready,
    }
}
