//! Input checks shared by the store's operations: component and environment names, config keys
//! and values, `by`, JSON objects, a whole change set. Each failure is a
//! [`StoreError::Invalid`] naming the field.

use agentwire_protocol::control::is_name_token;

use super::{invalid, Changes, StoreError, MAX_BY_LEN, MAX_KEY_LEN, MAX_VALUE_LEN};

pub(super) fn check_name(field: &'static str, s: &str) -> Result<(), StoreError> {
    if is_name_token(s) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{s:?} is not a name (1..=128 bytes of letters, digits, '_' or '-')"),
        ))
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    let ok_chars = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !ok_chars {
        return Err(invalid(
            "key",
            format!(
                "{key:?} is not a key (1..={MAX_KEY_LEN} bytes of letters, digits, '_', '-' or '.')"
            ),
        ));
    }
    if key.starts_with('.') || key.ends_with('.') {
        return Err(invalid(
            "key",
            format!("{key:?} must not start or end with '.'"),
        ));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(invalid(
            "value",
            format!(
                "the value of {key:?} is {} bytes (at most {MAX_VALUE_LEN})",
                value.len()
            ),
        ));
    }
    if value.contains('\0') {
        return Err(invalid(
            "value",
            format!("the value of {key:?} contains a NUL byte"),
        ));
    }
    Ok(())
}

pub(super) fn check_by(by: &str) -> Result<(), StoreError> {
    if by.len() > MAX_BY_LEN {
        return Err(invalid(
            "by",
            format!("{} bytes (at most {MAX_BY_LEN})", by.len()),
        ));
    }
    if by.contains('\0') {
        return Err(invalid("by", "contains a NUL byte"));
    }
    Ok(())
}

pub(super) fn check_json_object(
    field: &'static str,
    v: &serde_json::Value,
) -> Result<String, StoreError> {
    match v {
        serde_json::Value::Null => Ok("{}".to_owned()),
        serde_json::Value::Object(_) => Ok(v.to_string()),
        other => Err(invalid(
            field,
            format!("must be a JSON object, not {other}"),
        )),
    }
}

/// Checks the inputs of a config change.
pub(super) fn check_change(
    component: &str,
    environment: &str,
    changes: &Changes,
    by: &str,
) -> Result<(), StoreError> {
    check_name("component", component)?;
    check_name("environment", environment)?;
    check_by(by)?;
    if changes.is_empty() {
        return Err(invalid("changes", "no change (the change set is empty)"));
    }
    for (key, value) in changes {
        check_key(key)?;
        if let Some(value) = value {
            check_value(key, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::test_support::{changes, store_with};
    use super::super::{ConfigSnapshot, MAX_KEYS};
    use super::*;

    #[test]
    fn invalid_input_is_rejected_naming_the_field() {
        let s = store_with("svc");
        let field_of = |r: Result<ConfigSnapshot, StoreError>| match r {
            Err(StoreError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let ok = changes(&[("a", Some("1"))]);
        let long_name = "x".repeat(129);
        for bad in ["", "a b", "a.b", "é", long_name.as_str()] {
            assert_eq!(field_of(s.set(bad, "dev", &ok, None, "t")), "component");
            assert_eq!(field_of(s.set("svc", bad, &ok, None, "t")), "environment");
            assert_eq!(field_of(s.current(bad, "dev")), "component");
            assert!(matches!(
                s.ensure_component(bad, "t"),
                Err(StoreError::Invalid {
                    field: "component",
                    ..
                })
            ));
        }
        assert!(s.ensure_component(&"x".repeat(128), "t").unwrap());

        let long_key = "k".repeat(257);
        for bad in ["", ".a", "a.", ".", "a b", "a/b", "a=b", long_key.as_str()] {
            assert_eq!(
                field_of(s.set("svc", "dev", &changes(&[(bad, Some("v"))]), None, "t")),
                "key",
                "{bad:?}"
            );
        }
        let good_keys = ["a.b-c_D9", &"k".repeat(256)].map(str::to_owned);
        for good in &good_keys {
            s.set("svc", "dev", &changes(&[(good, Some("v"))]), None, "t")
                .unwrap();
        }

        let big = "v".repeat(MAX_VALUE_LEN + 1);
        assert_eq!(
            field_of(s.set("svc", "dev", &changes(&[("a", Some(&big))]), None, "t")),
            "value"
        );
        assert_eq!(
            field_of(s.set("svc", "dev", &changes(&[("a", Some("x\0y"))]), None, "t")),
            "value"
        );
        let max = "v".repeat(MAX_VALUE_LEN);
        s.set("svc", "dev", &changes(&[("a", Some(&max))]), None, "t")
            .unwrap();
        assert_eq!(s.current("svc", "dev").unwrap().values["a"], max);

        assert_eq!(
            field_of(s.set("svc", "dev", &ok, None, &"b".repeat(129))),
            "by"
        );
        assert_eq!(
            field_of(s.rollback("svc", "dev", 1, None, &"b".repeat(129))),
            "by"
        );

        // At most MAX_KEYS keys after the change.
        let v_before = s.current("svc", "dev").unwrap();
        let n = MAX_KEYS - v_before.values.len();
        let fill: Changes = (0..n)
            .map(|i| (format!("f{i}"), Some("v".to_owned())))
            .collect();
        let full = s.set("svc", "dev", &fill, None, "t").unwrap();
        assert_eq!(full.values.len(), MAX_KEYS);
        assert_eq!(
            field_of(s.set(
                "svc",
                "dev",
                &changes(&[("one.more", Some("v"))]),
                None,
                "t"
            )),
            "changes"
        );
        // Replacing one key by another keeps the count and is fine.
        s.set(
            "svc",
            "dev",
            &changes(&[("f0", None), ("one.more", Some("v"))]),
            None,
            "t",
        )
        .unwrap();
    }
}
