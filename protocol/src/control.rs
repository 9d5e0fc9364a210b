//! Control-plane frames: component registration, heartbeats with load, config push and
//! discovery, lame duck (ops `0x40`–`0x47`, `PROTOCOL.md` section 13).
//!
//! Each body is an rkyv-archived structure. A receiver copies the body into an aligned buffer
//! and validates it (bytecheck) before reading any field, so a hostile body is an error, never a
//! panic or an out-of-bounds read; then the field rules here ([`Registration::validate`], ...)
//! apply. Control frames are rare (one per registration, one per heartbeat interval), so the
//! copy costs nothing that matters.

use bytes::{BufMut, BytesMut};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::error::EncodeError;
use crate::frame::{op, HEADER_LEN};

/// Longest component name, instance id, environment, version, capability or metadata key.
pub const MAX_NAME_LEN: usize = 128;
/// Most capabilities, subjects or metadata entries in one registration.
pub const MAX_LIST_LEN: usize = 256;
/// Longest metadata value.
pub const MAX_META_VALUE_LEN: usize = 4096;
/// Longest `depends_on` entry (`component` or `component@REQ`).
pub const MAX_DEPENDENCY_LEN: usize = 256;

/// REGISTER (client → server): this connection is an instance of a component.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Registration {
    /// Component name (a name token: `[A-Za-z0-9_-]`, 1..=128 bytes).
    pub component: String,
    /// Instance id, unique among live instances of the component (name token).
    pub instance_id: String,
    /// The instance's own version string (printable ASCII, at most 128 bytes; may be empty).
    pub version: String,
    /// Config environment the instance reads (name token; empty means `default`).
    pub environment: String,
    /// Capabilities it offers (name tokens), for discovery by capability.
    pub capabilities: Vec<String>,
    /// Subjects (patterns) it serves, for the operator's view.
    pub subjects: Vec<String>,
    /// Free-form key/value metadata.
    pub metadata: Vec<(String, String)>,
    /// The heartbeat interval the client will keep, in milliseconds (0: the server's default).
    pub heartbeat_ms: u32,
    /// Components this one needs: `component` or `component@REQ`, REQ a semver requirement
    /// (`>=1.2, <2`, `^1.4`) the dependency's instance `version` must meet. At most
    /// [`MAX_LIST_LEN`] entries of at most [`MAX_DEPENDENCY_LEN`] bytes ([`Dependency::parse`]).
    pub depends_on: Vec<String>,
}

/// REGISTERED (server → client): the registration was accepted.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Registered {
    /// The instance id as registered.
    pub instance_id: String,
    /// The heartbeat interval the server expects, in milliseconds.
    pub heartbeat_ms: u32,
    /// Missed intervals after which the instance is marked unhealthy.
    pub unhealthy_after: u32,
    /// Missed intervals after which the instance is removed.
    pub remove_after: u32,
    /// The component's current config in the instance's environment.
    pub config: ConfigUpdate,
}

/// HEARTBEAT (client → server): the instance is alive, with its load. Zero means "not known" for
/// the optional figures.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Heartbeat {
    /// Requests or tasks in progress.
    pub in_flight: u32,
    /// Work waiting in the instance's own queues.
    pub queue_depth: u32,
    /// Recent request latency, microseconds (e.g. an EWMA or a recent p99); 0 = unknown.
    pub latency_us: u32,
    /// CPU use in per mille of one core (0..=64,000); 0 = unknown.
    pub cpu_permille: u32,
    /// Resident memory in bytes; 0 = unknown.
    pub mem_bytes: u64,
    /// Requests handled since the instance registered (cumulative; 0 = not reported). The
    /// broker adds the increase between heartbeats to the component's request count.
    pub requests_total: u64,
    /// Of those, requests answered with an error (cumulative; at most `requests_total`).
    pub errors_total: u64,
}

/// CONFIG (server → client): a component's config in one environment, as a whole.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ConfigUpdate {
    /// Component name.
    pub component: String,
    /// Environment.
    pub environment: String,
    /// Version (0: nothing was ever set).
    pub version: u64,
    /// Every key and its value, sorted by key.
    pub values: Vec<(String, String)>,
    /// When this version was written, milliseconds since the Unix epoch (0 for version 0).
    pub updated_at_ms: u64,
    /// Who wrote it.
    pub updated_by: String,
}

/// DISCOVER (client → server): list live instances. Empty filters match everything.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Discover {
    /// Echoed in the answer, so a client can have several in flight.
    pub request_id: u64,
    /// Only instances of this component (empty: any).
    pub component: String,
    /// Only instances offering this capability (empty: any).
    pub capability: String,
    /// Include instances currently marked unhealthy.
    pub include_unhealthy: bool,
}

/// DISCOVERED (server → client): the answer to a DISCOVER.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Discovered {
    /// The DISCOVER's request id.
    pub request_id: u64,
    /// Matching instances, sorted by component then instance id.
    pub instances: Vec<InstanceInfo>,
    /// The answer did not fit the server's `max_payload`: metadata was left out of every
    /// instance and, if still too large, the list was cut (ask a narrower query).
    pub truncated: bool,
}

/// One live instance as the registry sees it.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct InstanceInfo {
    /// Component name.
    pub component: String,
    /// Instance id.
    pub instance_id: String,
    /// Version string.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Served subjects.
    pub subjects: Vec<String>,
    /// Metadata.
    pub metadata: Vec<(String, String)>,
    /// Whether heartbeats arrive on time.
    pub healthy: bool,
    /// Health score, 0..=100 (100: on time and unloaded).
    pub health_score: u32,
    /// The last heartbeat's load.
    pub load: Heartbeat,
    /// Registration time, ms since the Unix epoch.
    pub registered_at_ms: u64,
    /// Last heartbeat (or registration) time, ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// Declared dependencies, as registered ([`Registration::depends_on`]).
    pub depends_on: Vec<String>,
}

/// LAMEDUCK (server → client): the server stopped accepting connections and will close this
/// one within `window_ms`; the client should move to another server of its list now.
#[derive(Debug, Clone, PartialEq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LameDuck {
    /// The server closes this connection at the latest this many ms after sending the notice.
    pub window_ms: u32,
    /// Why (e.g. "upgrade", "drain requested by the admin API").
    pub reason: String,
}

/// Why a control body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The bytes are not a valid archive of the expected type.
    #[error("control body of op {op:#04x} does not validate: {reason}")]
    Invalid {
        /// The op of the frame.
        op: u8,
        /// The validator's message.
        reason: String,
    },
    /// A field breaks its rule.
    #[error("{field}: {reason}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Whether `s` is a name token: 1..=128 bytes of `[A-Za-z0-9_-]`.
pub fn is_name_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_name(field: &'static str, s: &str) -> Result<(), ControlError> {
    if is_name_token(s) {
        Ok(())
    } else {
        Err(ControlError::Field {
            field,
            reason: format!(
                "{s:?} is not a name (1..={MAX_NAME_LEN} bytes of letters, digits, '_' or '-')"
            ),
        })
    }
}

fn check_printable(field: &'static str, s: &str, max: usize) -> Result<(), ControlError> {
    if s.len() > max {
        return Err(ControlError::Field {
            field,
            reason: format!("{} bytes, at most {max}", s.len()),
        });
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ControlError::Field {
            field,
            reason: "only printable ASCII is allowed".to_owned(),
        });
    }
    Ok(())
}

fn check_len(field: &'static str, n: usize) -> Result<(), ControlError> {
    if n > MAX_LIST_LEN {
        Err(ControlError::Field {
            field,
            reason: format!("{n} entries, at most {MAX_LIST_LEN}"),
        })
    } else {
        Ok(())
    }
}

impl Registration {
    /// Checks every field's rule.
    ///
    /// # Errors
    /// The first field that breaks its rule.
    pub fn validate(&self) -> Result<(), ControlError> {
        check_name("component", &self.component)?;
        check_name("instance_id", &self.instance_id)?;
        check_printable("version", &self.version, MAX_NAME_LEN)?;
        if !self.environment.is_empty() {
            check_name("environment", &self.environment)?;
        }
        check_len("capabilities", self.capabilities.len())?;
        for c in &self.capabilities {
            check_name("capabilities", c)?;
        }
        check_len("subjects", self.subjects.len())?;
        for s in &self.subjects {
            crate::subject::validate_pattern(s.as_bytes()).map_err(|e| ControlError::Field {
                field: "subjects",
                reason: format!("{s:?}: {e}"),
            })?;
        }
        check_len("metadata", self.metadata.len())?;
        for (k, v) in &self.metadata {
            check_name("metadata key", k)?;
            check_printable("metadata value", v, MAX_META_VALUE_LEN)?;
        }
        check_len("depends_on", self.depends_on.len())?;
        for d in &self.depends_on {
            Dependency::parse(d).map_err(|reason| ControlError::Field {
                field: "depends_on",
                reason,
            })?;
        }
        Ok(())
    }

    /// A registration of `instance_id` of `component`, every other field empty (builder start).
    pub fn new(component: impl Into<String>, instance_id: impl Into<String>) -> Registration {
        Registration {
            component: component.into(),
            instance_id: instance_id.into(),
            ..Registration::default()
        }
    }

    /// Sets the instance's version (compared with the ranges other components declare).
    pub fn version(mut self, version: impl Into<String>) -> Registration {
        self.version = version.into();
        self
    }

    /// Sets the config environment (empty: the client's or the broker's default).
    pub fn environment(mut self, environment: impl Into<String>) -> Registration {
        self.environment = environment.into();
        self
    }

    /// Declares dependencies: `["memory@^1.2", "llm"]` ([`Dependency::parse`] for the form).
    pub fn depends_on<I, S>(mut self, deps: I) -> Registration
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.depends_on = deps.into_iter().map(Into::into).collect();
        self
    }

    /// The environment, with the empty string read as `default`.
    pub fn environment_or_default(&self) -> &str {
        if self.environment.is_empty() {
            "default"
        } else {
            &self.environment
        }
    }
}

/// One parsed `depends_on` entry: a component name and an optional semver requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The component depended on.
    pub component: String,
    /// The versions accepted (`None`: any version, including none or an unparsable one).
    pub requirement: Option<semver::VersionReq>,
}

impl Dependency {
    /// Parses `component` or `component@REQ`: the component is a name token, REQ a semver
    /// requirement (`>=1.2, <2`, `^1.4`, `=2.0.1`, `1.*`); the whole entry printable ASCII of at
    /// most [`MAX_DEPENDENCY_LEN`] bytes.
    ///
    /// # Errors
    /// What is wrong, worded for the user.
    pub fn parse(s: &str) -> Result<Dependency, String> {
        if s.len() > MAX_DEPENDENCY_LEN {
            return Err(format!(
                "{} bytes, at most {MAX_DEPENDENCY_LEN} per entry",
                s.len()
            ));
        }
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err("only printable ASCII is allowed".to_owned());
        }
        let (name, req) = match s.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (s, None),
        };
        if !is_name_token(name) {
            return Err(format!(
                "{s:?}: {name:?} is not a component name (1..={MAX_NAME_LEN} bytes of letters, digits, '_' or '-')"
            ));
        }
        let requirement = match req {
            None => None,
            Some(r) => Some(semver::VersionReq::parse(r.trim()).map_err(|e| {
                format!("{s:?}: {r:?} is not a semver requirement (e.g. \">=1.2, <2\" or \"^1.4\"): {e}")
            })?),
        };
        Ok(Dependency {
            component: name.to_owned(),
            requirement,
        })
    }

    /// Whether `version` meets the requirement: any version when there is none; with one,
    /// `version` must parse as semver (a leading `v` is allowed) and match.
    pub fn accepts(&self, version: &str) -> bool {
        match &self.requirement {
            None => true,
            Some(req) => {
                let v = version.trim();
                let v = v.strip_prefix('v').unwrap_or(v);
                semver::Version::parse(v).is_ok_and(|v| req.matches(&v))
            }
        }
    }

    /// The requirement as text (`"*"` when there is none).
    pub fn wanted(&self) -> String {
        self.requirement
            .as_ref()
            .map_or_else(|| "*".to_owned(), ToString::to_string)
    }
}

impl Discover {
    /// Checks the filters.
    ///
    /// # Errors
    /// A filter that is neither empty nor a name.
    pub fn validate(&self) -> Result<(), ControlError> {
        if !self.component.is_empty() {
            check_name("component", &self.component)?;
        }
        if !self.capability.is_empty() {
            check_name("capability", &self.capability)?;
        }
        Ok(())
    }
}

/// A control body type: its op, and how it is archived and read back.
pub trait ControlBody: Sized {
    /// The op of frames carrying this body.
    const OP: u8;
    /// Archives `self` as a frame body.
    ///
    /// # Errors
    /// When serialization fails (it does not for these plain types).
    fn to_body(&self) -> Result<AlignedVec, EncodeError>;
    /// Validates and reads a body.
    ///
    /// # Errors
    /// [`ControlError::Invalid`] when the bytes are not a valid archive of this type.
    fn from_body(body: &[u8]) -> Result<Self, ControlError>;
}

macro_rules! control_body {
    ($t:ty, $op:expr) => {
        impl ControlBody for $t {
            const OP: u8 = $op;
            fn to_body(&self) -> Result<AlignedVec, EncodeError> {
                rkyv::to_bytes::<rancor::Error>(self).map_err(|_| EncodeError::ControlBody)
            }
            fn from_body(body: &[u8]) -> Result<Self, ControlError> {
                // Archives must be read from aligned memory: copy (control frames are rare).
                let mut aligned = AlignedVec::<16>::with_capacity(body.len());
                aligned.extend_from_slice(body);
                rkyv::from_bytes::<$t, rancor::Error>(&aligned).map_err(|e| ControlError::Invalid {
                    op: $op,
                    reason: e.to_string(),
                })
            }
        }
    };
}

control_body!(Registration, op::REGISTER);
control_body!(Registered, op::REGISTERED);
control_body!(Heartbeat, op::HEARTBEAT);
control_body!(ConfigUpdate, op::CONFIG);
control_body!(Discover, op::DISCOVER);
control_body!(Discovered, op::DISCOVERED);
control_body!(LameDuck, op::LAMEDUCK);

/// Appends a control frame carrying `body` to `dst`.
///
/// # Errors
/// [`EncodeError::FieldTooLong`] when the frame would not fit a `u32` length, or the body
/// cannot be archived.
pub fn encode_control<T: ControlBody>(dst: &mut BytesMut, body: &T) -> Result<(), EncodeError> {
    let bytes = body.to_body()?;
    let len = HEADER_LEN + bytes.len();
    let len32 = u32::try_from(len).map_err(|_| EncodeError::FieldTooLong {
        field: "control body",
        len,
        max: u32::MAX as usize - HEADER_LEN,
    })?;
    dst.reserve(len);
    dst.put_u32_le(len32);
    dst.put_u8(T::OP);
    dst.put_u8(0);
    dst.put_slice(&bytes);
    Ok(())
}

/// Appends a DEREGISTER frame (no body) to `dst`.
pub fn encode_deregister(dst: &mut BytesMut) {
    dst.put_u32_le(HEADER_LEN as u32);
    dst.put_u8(op::DEREGISTER);
    dst.put_u8(0);
}

/// Reads a control body of type `T`.
///
/// # Errors
/// [`ControlError::Invalid`] when the bytes do not validate as `T`.
pub fn decode_control<T: ControlBody>(body: &[u8]) -> Result<T, ControlError> {
    T::from_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, Frame};

    fn reg() -> Registration {
        Registration {
            component: "planner".into(),
            instance_id: "planner-0".into(),
            version: "1.2.3".into(),
            environment: String::new(),
            capabilities: vec!["plan".into(), "route".into()],
            subjects: vec!["planner.>".into()],
            metadata: vec![("zone".into(), "eu-1".into())],
            heartbeat_ms: 1000,
            depends_on: vec!["memory@>=1.2, <2".into(), "llm".into()],
        }
    }

    #[test]
    fn registration_round_trips_through_a_frame() {
        let mut b = BytesMut::new();
        encode_control(&mut b, &reg()).expect("encode");
        let (frame, used) = decode_frame(&b, 1 << 20).expect("ok").expect("complete");
        assert_eq!(used, b.len());
        let Frame::Unknown { op: o, body, .. } = frame else {
            panic!("control frames parse as op + body, got {frame:?}");
        };
        assert_eq!(o, op::REGISTER);
        let back: Registration = decode_control(body).expect("valid");
        assert_eq!(back, reg());
        back.validate().expect("valid fields");
    }

    #[test]
    fn every_body_round_trips() {
        let cfg = ConfigUpdate {
            component: "planner".into(),
            environment: "default".into(),
            version: 7,
            values: vec![("a".into(), "1".into())],
            updated_at_ms: 1_700_000_000_000,
            updated_by: "ops".into(),
        };
        let r = Registered {
            instance_id: "planner-0".into(),
            heartbeat_ms: 1000,
            unhealthy_after: 3,
            remove_after: 10,
            config: cfg.clone(),
        };
        assert_eq!(
            decode_control::<Registered>(&r.to_body().expect("e")),
            Ok(r)
        );
        assert_eq!(
            decode_control::<ConfigUpdate>(&cfg.to_body().expect("e")),
            Ok(cfg)
        );
        let h = Heartbeat {
            in_flight: 3,
            queue_depth: 9,
            latency_us: 1200,
            cpu_permille: 450,
            mem_bytes: 1 << 30,
            requests_total: 1_000,
            errors_total: 7,
        };
        assert_eq!(
            decode_control::<Heartbeat>(&h.to_body().expect("e")),
            Ok(h.clone())
        );
        let d = Discover {
            request_id: 42,
            component: String::new(),
            capability: "plan".into(),
            include_unhealthy: true,
        };
        assert_eq!(decode_control::<Discover>(&d.to_body().expect("e")), Ok(d));
        let ds = Discovered {
            request_id: 42,
            truncated: false,
            instances: vec![InstanceInfo {
                component: "planner".into(),
                instance_id: "planner-0".into(),
                healthy: true,
                health_score: 97,
                load: h,
                ..InstanceInfo::default()
            }],
        };
        assert_eq!(
            decode_control::<Discovered>(&ds.to_body().expect("e")),
            Ok(ds)
        );
    }

    #[test]
    fn garbage_and_truncated_bodies_are_errors_not_panics() {
        let good = reg().to_body().expect("encode");
        for cut in 0..good.len() {
            let _ = decode_control::<Registration>(&good[..cut]);
        }
        assert!(decode_control::<Registration>(&[]).is_err());
        assert!(decode_control::<Registration>(&[0xff; 64]).is_err());
        let mut flipped = good.to_vec();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xa5;
            let _ = decode_control::<Registration>(&flipped);
            flipped[i] ^= 0xa5;
        }
    }

    #[test]
    fn field_rules() {
        let mut r = reg();
        r.component = "bad name".into();
        assert!(matches!(
            r.validate(),
            Err(ControlError::Field {
                field: "component",
                ..
            })
        ));
        let mut r = reg();
        r.instance_id = String::new();
        assert!(r.validate().is_err());
        let mut r = reg();
        r.subjects = vec!["a..b".into()];
        assert!(matches!(
            r.validate(),
            Err(ControlError::Field {
                field: "subjects",
                ..
            })
        ));
        let mut r = reg();
        r.capabilities = (0..=MAX_LIST_LEN).map(|i| format!("c{i}")).collect();
        assert!(r.validate().is_err());
        let mut r = reg();
        r.version = "1\n".into();
        assert!(r.validate().is_err());
        assert_eq!(reg().environment_or_default(), "default");
        assert!(is_name_token("a-b_C9"));
        assert!(!is_name_token(&"x".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn dependency_entries_parse_and_match() {
        let d = Dependency::parse("memory@^1.2").expect("valid");
        assert_eq!(d.component, "memory");
        assert_eq!(d.wanted(), "^1.2");
        assert!(d.accepts("1.2.0") && d.accepts("1.9.3") && d.accepts("v1.4.0"));
        assert!(!d.accepts("2.0.0") && !d.accepts("1.1.9"));
        assert!(
            !d.accepts("") && !d.accepts("latest"),
            "unparsable: not accepted"
        );
        let d = Dependency::parse("memory@>=1.2, <2").expect("valid");
        assert!(d.accepts("1.2.0") && !d.accepts("2.0.0"));
        let any = Dependency::parse("llm").expect("valid");
        assert_eq!(any.requirement, None);
        assert_eq!(any.wanted(), "*");
        assert!(any.accepts("") && any.accepts("whatever"));
        for bad in [
            "",
            "@^1",
            "bad name",
            "memory@",
            "memory@not a range",
            "memory@^1.2@3",
            "mem\u{e9}",
        ] {
            assert!(Dependency::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("m@{}", "1".repeat(MAX_DEPENDENCY_LEN));
        assert!(Dependency::parse(&long).is_err());
    }

    #[test]
    fn depends_on_rules_and_builder() {
        let r = Registration::new("planner", "p0")
            .version("1.0.0")
            .environment("prod")
            .depends_on(["memory@^1.2", "llm"]);
        assert_eq!(r.depends_on, vec!["memory@^1.2", "llm"]);
        assert_eq!(r.environment_or_default(), "prod");
        r.validate().expect("valid");
        let r = Registration::new("planner", "p0").depends_on(["memory@^x"]);
        assert!(matches!(
            r.validate(),
            Err(ControlError::Field {
                field: "depends_on",
                ..
            })
        ));
        let r = Registration::new("planner", "p0")
            .depends_on((0..=MAX_LIST_LEN).map(|i| format!("c{i}")));
        assert!(r.validate().is_err());
        let back: Registration = decode_control(&reg().to_body().expect("encode")).expect("valid");
        assert_eq!(back.depends_on, reg().depends_on);
    }

    #[test]
    fn deregister_is_a_bare_header() {
        let mut b = BytesMut::new();
        encode_deregister(&mut b);
        assert_eq!(&b[..], &[6, 0, 0, 0, op::DEREGISTER, 0]);
    }
}
