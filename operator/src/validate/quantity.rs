//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`), checked with the grammar of
//! apimachinery's `resource.ParseQuantity`, so a spec the API server would refuse when the
//! operator applies the workload is refused up front with its field named.
//!
//! Hand-written: k8s-openapi's `Quantity` is an unchecked string, and only acceptance is needed
//! here (no arithmetic), which is one small grammar.

use serde_json::Value;

/// `Ok` when `s` parses as a Kubernetes quantity.
pub fn parse(s: &str) -> Result<(), String> {
    let (number, suffix) = split_number(s);
    let digits = number.trim_start_matches(['+', '-']);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if number.len() - digits.len() > 1
        || (int.is_empty() && frac.is_empty())
        || !plain(int)
        || !plain(frac)
    {
        return Err(format!(
            "{s:?} is not a Kubernetes quantity: expected a number with an optional suffix, such as 100m, 0.5, 2Gi or 1e3"
        ));
    }
    let suffix_ok = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && plain(e));
    if !suffix_ok {
        return Err(format!(
            "{s:?} is not a Kubernetes quantity: unknown suffix {suffix:?} (expected one of n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei, or an exponent such as e3)"
        ));
    }
    Ok(())
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '+' || c == '-'))))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    s.split_at(end)
}

/// Checks `requests` and `limits` of a `resources` map: every entry a quantity (numbers are
/// quantities too), none negative (pod validation refuses those). Returns the failing sub-path.
pub fn check_resources(resources: &Value) -> Result<(), (String, String)> {
    let Some(m) = resources.as_object() else {
        return Ok(());
    };
    for part in ["requests", "limits"] {
        let Some(entries) = m.get(part).and_then(Value::as_object) else {
            continue;
        };
        for (name, q) in entries {
            let text = match q {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err((
                        format!("{part}.{name}"),
                        format!("expected a quantity such as 100m or 2Gi, found {other}"),
                    ));
                }
            };
            parse(&text).map_err(|e| (format!("{part}.{name}"), e))?;
            if text.starts_with('-') {
                return Err((
                    format!("{part}.{name}"),
                    format!("{text:?} is negative; expected a quantity of 0 or more"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_api_servers_quantities() {
        for ok in [
            "1",
            "100m",
            "0.5",
            ".5",
            "5.",
            "2Gi",
            "1e3",
            "1E-2",
            "+1",
            "128974848",
            "129M",
            "1Ki",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "lots", "", "1.2.3", "1 Gi", "1gi", "1KiB", "e3", "1e", "--1", "Gi", ".",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_name_the_entry() {
        let e = check_resources(&json!({"requests": {"cpu": "lots"}})).unwrap_err();
        assert_eq!(e.0, "requests.cpu");
        assert!(
            e.1.starts_with("\"lots\" is not a Kubernetes quantity"),
            "{}",
            e.1
        );
        assert!(check_resources(&json!({"limits": {"memory": "-1Gi"}})).is_err());
        assert!(check_resources(&json!({"requests": {"cpu": 1, "memory": "2Gi"}})).is_ok());
    }
}
