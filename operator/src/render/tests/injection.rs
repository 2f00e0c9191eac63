//! Render tests of the injection templates: the Go templates istiod executes per pod (and per
//! managed gateway), carried in the `config` of the `istio-sidecar-injector` ConfigMap. Rust
//! cannot run them, so these tests check what can be checked statically: every template is
//! there, its actions and blocks are well formed, and every value it reads has a default in the
//! ConfigMap's `values`.

use super::{find, render_spec};
use serde_json::Value;

const VERSIONS: [&str; 2] = ["1.23", "1.24"];
const TEMPLATES: [&str; 6] = [
    "sidecar",
    "gateway",
    "waypoint",
    "kube-gateway",
    "grpc-agent",
    "grpc-simple",
];

/// The injector ConfigMap of a default install: (`config` parsed, `values` parsed).
fn injector(spec: &str) -> (Value, Value) {
    let objs = render_spec(spec);
    let cm = find(&objs, "ConfigMap", "istio-sidecar-injector");
    let config = crate::bundle::parse_yaml(cm["data"]["config"].as_str().expect("config"))
        .unwrap_or_else(|e| panic!("config is not YAML: {e}"));
    let values: Value = serde_json::from_str(cm["data"]["values"].as_str().expect("values"))
        .unwrap_or_else(|e| panic!("values is not JSON: {e}"));
    (config, values)
}

fn template(config: &Value, name: &str) -> String {
    config["templates"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no template {name}"))
        .to_string()
}

/// The actions (`{{ … }}`) of a Go template, trimmed of `-` markers and spaces; comments are
/// skipped. Errors name the byte offset of an unterminated action or comment.
fn actions(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        let body = &rest[start + 2..];
        let inner = body.strip_prefix('-').unwrap_or(body).trim_start();
        let consumed = if let Some(comment) = inner.strip_prefix("/*") {
            let close = comment
                .find("*/")
                .ok_or(format!("unterminated comment at byte {}", offset + start))?;
            let after = comment[close + 2..].trim_start();
            let after = after.strip_prefix('-').unwrap_or(after).trim_start();
            if !after.starts_with("}}") {
                return Err(format!(
                    "comment not closed by }}}} at byte {}",
                    offset + start
                ));
            }
            // bytes up to and including the closing braces
            rest.len() - after.len() + 2
        } else {
            let end = body
                .find("}}")
                .ok_or(format!("unterminated action at byte {}", offset + start))?;
            let action = &body[..end];
            if action.contains("{{") {
                return Err(format!(
                    "nested {{{{ in the action at byte {}",
                    offset + start
                ));
            }
            let action = action.strip_prefix('-').unwrap_or(action);
            let action = action.strip_suffix('-').unwrap_or(action);
            out.push(action.trim().to_string());
            start + 2 + end + 2
        };
        offset += consumed;
        rest = &rest[consumed..];
    }
    if rest.contains("}}") {
        return Err("}} without {{".into());
    }
    Ok(out)
}

/// Checks that block actions nest: every `if`/`range`/`with`/`define`/`block` has its `end`,
/// `else` appears only inside an `if`/`range`/`with`, and nothing ends twice.
fn check_blocks(text: &str) -> Result<(), String> {
    let mut open: Vec<&str> = Vec::new();
    let acts = actions(text)?;
    for a in &acts {
        let word = a.split_whitespace().next().unwrap_or("");
        match word {
            "if" | "range" | "with" | "define" | "block" => open.push(word),
            "else" => match open.last() {
                Some(&("if" | "range" | "with")) => {}
                other => return Err(format!("else inside {other:?}: {a}")),
            },
            "end" => {
                open.pop().ok_or(format!("end without a block: {a}"))?;
            }
            _ => {}
        }
    }
    if open.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed blocks: {open:?}"))
    }
}

/// The `.Values` paths a template reads, with its aliases resolved (`$g` = `.Values.global`,
/// `$px` = `.Values.global.proxy`, `$wp` = `.Values.global.waypoint`). Keys read through
/// `dig` carry their own default and are not listed.
fn values_read(text: &str) -> Vec<String> {
    let aliases = [
        ("$px.", "global.proxy."),
        ("$wp.", "global.waypoint."),
        ("$g.", "global."),
        (".Values.", ""),
    ];
    let mut out = Vec::new();
    for a in actions(text).unwrap() {
        for (alias, prefix) in aliases {
            let mut from = 0;
            while let Some(i) = a[from..].find(alias) {
                let at = from + i;
                from = at + alias.len();
                // `$.Values.` and `$g.` must not match inside longer names like `$gke`
                if alias == ".Values." && at > 0 && a[..at].ends_with(|c: char| c.is_alphanumeric())
                {
                    continue;
                }
                if alias.starts_with('$')
                    && at > 0
                    && a[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                {
                    continue;
                }
                let path: String = a[from..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                    .collect();
                let path = path.trim_end_matches('.');
                if !path.is_empty() {
                    out.push(format!("{prefix}{path}"));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(values, |v, k| v.get(k))
}

#[test]
fn injector_configmap_carries_all_six_templates() {
    for version in VERSIONS {
        let (config, values) = injector(&format!("version: '{version}'\n"));
        let templates = config["templates"].as_object().expect("templates map");
        for name in TEMPLATES {
            let body = templates
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{version}: no template {name}"));
            assert!(body.contains("{{"), "{version} {name}: not a template");
        }
        assert_eq!(config["defaultTemplates"], serde_json::json!(["sidecar"]));
        assert!(
            values["global"]["proxy"].is_object(),
            "{version}: values.global.proxy"
        );
    }
}

#[test]
fn injection_templates_are_well_formed_go_templates() {
    for version in VERSIONS {
        let (config, _) = injector(&format!("version: '{version}'\n"));
        for name in TEMPLATES {
            let body = template(&config, name);
            check_blocks(&body).unwrap_or_else(|e| panic!("{version} {name}: {e}"));
            assert!(!body.contains('\t'), "{version} {name}: tab in YAML");
        }
    }
}

#[test]
fn every_value_an_injection_template_reads_has_a_default() {
    // Read only through valueOrDefault, as the charts do: absent in every release's values.
    let optional = ["global.trustDomain"];
    for version in VERSIONS {
        let (config, values) = injector(&format!("version: '{version}'\n"));
        let sidecar = values_read(&template(&config, "sidecar"));
        assert!(
            sidecar.contains(&"global.proxy.statusPort".to_string()),
            "{sidecar:?}"
        );
        for name in TEMPLATES {
            for path in values_read(&template(&config, name)) {
                if optional.contains(&path.as_str()) {
                    continue;
                }
                assert!(
                    lookup(&values, &path).is_some(),
                    "{version} {name}: reads values.{path}, which the injector values lack"
                );
            }
        }
    }
}

#[test]
fn gateway_deployment_templates_follow_the_release() {
    let (old, _) = injector("version: '1.23'\n");
    let (new, _) = injector("version: '1.24'\n");
    for name in ["waypoint", "kube-gateway"] {
        let (o, n) = (template(&old, name), template(&new, name));
        for t in [&o, &n] {
            for kind in ["ServiceAccount", "Deployment", "Service"] {
                assert!(t.contains(&format!("kind: {kind}\n")), "{name}: no {kind}");
            }
            // the selector label of an existing Deployment is kept (immutable selectors)
            assert!(t.contains(".GatewayNameLabel"), "{name}: selector");
        }
        // 1.24 dropped the istio.io/gateway-name label
        assert!(o.contains("\"istio.io/gateway-name\""), "1.23 {name}");
        assert!(!n.contains("istio.io/gateway-name"), "1.24 {name}");
    }
    let (o, n) = (template(&old, "waypoint"), template(&new, "waypoint"));
    assert!(n.contains("networking.istio.io/traffic-distribution"));
    assert!(!o.contains("networking.istio.io/traffic-distribution"));
    assert!(n.contains("containerPort: 15020") && !o.contains("containerPort: 15020"));
    assert!(n.contains("$wp.resources") && !o.contains("$wp."));
    assert!(template(&new, "kube-gateway").contains("ipFamilyPolicy: PreferDualStack"));
    assert!(!template(&old, "kube-gateway").contains("ipFamilyPolicy"));
}

#[test]
fn sidecar_template_differences_between_releases() {
    let (old, _) = injector("version: '1.23'\n");
    let (new, _) = injector("version: '1.24'\n");
    let (o, n) = (template(&old, "sidecar"), template(&new, "sidecar"));
    // 1.24: per-pod native sidecar annotation, --force-apply; 1.23: core dumps, istio_cni
    assert!(n.contains("sidecar.istio.io/nativeSidecar") && !o.contains("nativeSidecar"));
    assert!(n.contains("forceApplyIptables") && !o.contains("forceApplyIptables"));
    assert!(o.contains("enable-core-dump") && !n.contains("enable-core-dump"));
    assert!(o.contains("istio_cni") && !n.contains("istio_cni"));
    for t in [&o, &n] {
        for name in ["istio-init", "istio-validation", "istio-proxy"] {
            assert!(t.contains(name), "sidecar template lacks {name}");
        }
    }
}

#[test]
fn proxy_defaults_and_demo_profile() {
    for version in VERSIONS {
        let (_, values) = injector(&format!("version: '{version}'\n"));
        let proxy = &values["global"]["proxy"];
        assert_eq!(proxy["image"], "proxyv2");
        assert_eq!(proxy["statusPort"], 15020);
        assert_eq!(proxy["logLevel"], "warning");
        assert_eq!(proxy["resources"]["requests"]["cpu"], "100m");
        assert_eq!(proxy["resources"]["limits"]["memory"], "1024Mi");
        assert_eq!(proxy["startupProbe"]["failureThreshold"], 600);
        assert_eq!(values["global"]["proxy_init"]["image"], "proxyv2");

        let (_, demo) = injector(&format!("version: '{version}'\nprofile: demo\n"));
        let requests = &demo["global"]["proxy"]["resources"]["requests"];
        assert_eq!(
            (requests["cpu"].as_str(), requests["memory"].as_str()),
            (Some("10m"), Some("40Mi"))
        );
        assert_eq!(
            demo["global"]["proxy"]["resources"]["limits"]["cpu"],
            "2000m"
        );
    }
    let (_, v24) = injector("version: '1.24'\nprofile: demo\n");
    assert_eq!(
        v24["global"]["waypoint"]["resources"]["requests"]["cpu"],
        "10m"
    );
    assert_eq!(v24["global"]["waypoint"]["resources"]["limits"]["cpu"], "2");
    assert_eq!(v24["global"]["proxy_init"]["forceApplyIptables"], false);
}

#[test]
fn user_proxy_values_reach_the_injector() {
    let (_, values) = injector(
        "version: '1.24'\nvalues:\n  global:\n    proxy:\n      holdApplicationUntilProxyStarts: true\n      \
         lifecycle: {preStop: {exec: {command: [sleep, '5']}}}\n",
    );
    assert_eq!(
        values["global"]["proxy"]["holdApplicationUntilProxyStarts"],
        true
    );
    assert_eq!(
        values["global"]["proxy"]["lifecycle"]["preStop"]["exec"]["command"][0],
        "sleep"
    );
}

#[test]
fn checker_rejects_broken_templates() {
    assert!(check_blocks("{{ if .A }}x{{ else }}y{{ end }}").is_ok());
    assert!(check_blocks("{{- /* comments {{ are skipped */ -}}{{ with .B }}{{ end }}").is_ok());
    assert!(check_blocks("{{/* unterminated }}").is_err());
    assert!(check_blocks("{{ if .A }}x").is_err());
    assert!(check_blocks("{{ end }}").is_err());
    assert!(check_blocks("{{ else }}").is_err());
    assert!(check_blocks("{{ .A ").is_err());
    assert!(check_blocks("a }} b").is_err());
    assert!(check_blocks("{{ .A {{ .B }}").is_err());
    assert_eq!(
        values_read("{{ $gke := 1 }}{{ $g.meshID }}{{ .Values.pilot.cni.enabled }}{{ $px.image }}"),
        ["global.meshID", "global.proxy.image", "pilot.cni.enabled"]
    );
}
