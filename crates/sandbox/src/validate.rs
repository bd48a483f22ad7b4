//! Input validation: every check a request must pass before any VM is touched.
//!
//! Validation is pure (no I/O) so it is cheap, fuzzable and the same for every caller
//! (library, CLI, server). Each error names the field that was wrong.

use std::time::Duration;

use crate::request::RunRequest;

/// Largest accepted code, in bytes.
pub const MAX_CODE_BYTES: usize = 1024 * 1024;
/// Accepted execution timeouts.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Accepted guest memory sizes, in MiB.
pub const MIN_MEMORY_MB: u32 = 128;
pub const MAX_MEMORY_MB: u32 = 16 * 1024;
/// Accepted home disk sizes, in MiB.
pub const MIN_DISK_MB: u32 = 64;
pub const MAX_DISK_MB: u32 = 1024 * 1024;
/// Limits on extra environment variables.
pub const MAX_ENV_VARS: usize = 128;
pub const MAX_ENV_NAME_BYTES: usize = 128;
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// All names and values together: the guest's exec limit (`ARG_MAX`) is 2 MiB for
/// arguments and environment, so this leaves ample room for the sandbox's own.
pub const MAX_ENV_TOTAL_BYTES: usize = 512 * 1024;

/// Longest accepted guest path and path component, in bytes (Linux's `PATH_MAX` and
/// `NAME_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_PATH_COMPONENT_BYTES: usize = 255;
/// Accepted session idle timeouts.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Variables that change how the loader, the shell or an interpreter starts. They are
/// refused because they would let a caller's settings act on the sandbox's own launchers
/// rather than on the caller's code.
const BLOCKED_ENV: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "IFS",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONINSPECT",
    "NODE_OPTIONS",
    "BUN_OPTIONS",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "MALLOC_CHECK_",
];
const BLOCKED_ENV_PREFIXES: &[&str] = &["LD_", "BASH_FUNC_", "DYLD_"];

/// What was wrong with a request. The caller's bug: nothing was started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("code: is empty or only whitespace")]
    EmptyCode,
    #[error("code: contains a NUL byte at offset {offset}")]
    NulInCode { offset: usize },
    #[error("code: is over the {max}-byte limit ({len} bytes read)")]
    CodeTooLarge { len: usize, max: usize },
    #[error("timeout: {}.{:03} s is outside the accepted range {min_s}..={max_s} s", given_ms / 1000, given_ms % 1000)]
    Timeout {
        given_ms: u128,
        min_s: u64,
        max_s: u64,
    },
    #[error("memory: {given} MiB is outside the accepted range {min}..={max} MiB")]
    Memory { given: u32, min: u32, max: u32 },
    #[error("disk: {given} MiB is outside the accepted range {min}..={max} MiB")]
    Disk { given: u32, min: u32, max: u32 },
    #[error("extension: {given:?} is not one of {allowed:?} for {language}")]
    Extension {
        given: String,
        language: protocol::Language,
        allowed: &'static [&'static str],
    },
    #[error("env: {count} variables, over the limit of {max}")]
    TooManyEnvVars { count: usize, max: usize },
    #[error("env: name {name:?} is invalid: {reason}")]
    EnvName { name: String, reason: &'static str },
    #[error("env: {name} is not allowed (it changes how the sandbox's launchers start)")]
    EnvBlocked { name: String },
    #[error("env: {total} bytes of names and values, over the {max}-byte total")]
    EnvTooLarge { total: usize, max: usize },
    #[error("env: {name} is given more than once")]
    EnvDuplicate { name: String },
    #[error("env: value of {name} is invalid: {reason}")]
    EnvValue { name: String, reason: String },
    #[error("path: is empty (name a file under /home/user)")]
    PathEmpty,
    #[error("path: {path:?} is absolute; give a path relative to /home/user")]
    PathAbsolute { path: String },
    #[error("path: {path:?} leaves /home/user through '..'")]
    PathEscapes { path: String },
    #[error("path: contains a NUL byte at offset {offset}")]
    PathNul { offset: usize },
    #[error("path: is {len} bytes, over the {max}-byte limit")]
    PathTooLong { len: usize, max: usize },
    #[error("path: component {component:?} is {len} bytes, over the {max}-byte limit")]
    PathComponentTooLong {
        component: String,
        len: usize,
        max: usize,
    },
    #[error("idle timeout: {}.{:03} s is outside the accepted range {min_s}..={max_s} s", given_ms / 1000, given_ms % 1000)]
    IdleTimeout {
        given_ms: u128,
        min_s: u64,
        max_s: u64,
    },
    #[error("expose_ports: {reason}")]
    Ports { reason: String },
    #[error("network: {reason}")]
    Network { reason: String },
    #[error("network: domain {domain:?} {reason}")]
    Domain { domain: String, reason: String },
    #[error("network: destination range {range:?} {reason}")]
    Range { range: String, reason: String },
}

impl ValidationError {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::EmptyCode | Self::NulInCode { .. } | Self::CodeTooLarge { .. } => "code",
            Self::Timeout { .. } => "timeout",
            Self::Memory { .. } => "memory",
            Self::Disk { .. } => "disk",
            Self::Extension { .. } => "extension",
            Self::TooManyEnvVars { .. }
            | Self::EnvName { .. }
            | Self::EnvBlocked { .. }
            | Self::EnvDuplicate { .. }
            | Self::EnvTooLarge { .. }
            | Self::EnvValue { .. } => "env",
            Self::PathEmpty
            | Self::PathAbsolute { .. }
            | Self::PathEscapes { .. }
            | Self::PathNul { .. }
            | Self::PathTooLong { .. }
            | Self::PathComponentTooLong { .. } => "path",
            Self::IdleTimeout { .. } => "idle_timeout",
            Self::Ports { .. } => "expose_ports",
            Self::Network { .. } | Self::Domain { .. } | Self::Range { .. } => "network",
        }
    }
}

/// Checks a whole request; the first problem found is returned.
pub fn validate(req: &RunRequest) -> Result<(), ValidationError> {
    validate_code(&req.code)?;
    validate_timeout(req.timeout)?;
    validate_memory(req.memory_mb)?;
    validate_disk(req.disk_mb)?;
    if let Some(ext) = &req.extension {
        validate_extension(req.language, ext)?;
    }
    validate_env(&req.env)?;
    crate::network::validate_network(&req.network, &req.expose_ports)
}

/// The code file's extension must be one the language's interpreter knows.
pub fn validate_extension(language: protocol::Language, ext: &str) -> Result<(), ValidationError> {
    let allowed = language.extensions();
    if !allowed.contains(&ext) {
        return Err(ValidationError::Extension {
            given: ext.to_string(),
            language,
            allowed,
        });
    }
    Ok(())
}

pub fn validate_code(code: &str) -> Result<(), ValidationError> {
    if code.len() > MAX_CODE_BYTES {
        return Err(ValidationError::CodeTooLarge {
            len: code.len(),
            max: MAX_CODE_BYTES,
        });
    }
    if let Some(offset) = code.bytes().position(|b| b == 0) {
        return Err(ValidationError::NulInCode { offset });
    }
    if code.trim().is_empty() {
        return Err(ValidationError::EmptyCode);
    }
    Ok(())
}

pub fn validate_timeout(timeout: Duration) -> Result<(), ValidationError> {
    if timeout < MIN_TIMEOUT || timeout > MAX_TIMEOUT {
        return Err(ValidationError::Timeout {
            given_ms: timeout.as_millis(),
            min_s: MIN_TIMEOUT.as_secs(),
            max_s: MAX_TIMEOUT.as_secs(),
        });
    }
    Ok(())
}

pub fn validate_disk(mb: u32) -> Result<(), ValidationError> {
    if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&mb) {
        return Err(ValidationError::Disk {
            given: mb,
            min: MIN_DISK_MB,
            max: MAX_DISK_MB,
        });
    }
    Ok(())
}

pub fn validate_memory(mb: u32) -> Result<(), ValidationError> {
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&mb) {
        return Err(ValidationError::Memory {
            given: mb,
            min: MIN_MEMORY_MB,
            max: MAX_MEMORY_MB,
        });
    }
    Ok(())
}

pub fn validate_env(env: &[(String, String)]) -> Result<(), ValidationError> {
    if env.len() > MAX_ENV_VARS {
        return Err(ValidationError::TooManyEnvVars {
            count: env.len(),
            max: MAX_ENV_VARS,
        });
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if total > MAX_ENV_TOTAL_BYTES {
        return Err(ValidationError::EnvTooLarge {
            total,
            max: MAX_ENV_TOTAL_BYTES,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in env {
        validate_env_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(ValidationError::EnvDuplicate { name: name.clone() });
        }
        validate_env_value(name, value)?;
    }
    Ok(())
}

/// Checks a path under the guest's home directory and returns it normalised: `.` and empty
/// components dropped, `..` applied. The guest re-checks the result and resolves it without
/// ever leaving the home directory, even through symlinks; this check gives the caller a
/// clear error early. `allow_home` accepts the empty path (the home directory itself).
///
/// ```
/// use sandbox::normalize_guest_path;
/// assert_eq!(normalize_guest_path("./data//a/../b.csv", false).unwrap(), "data/b.csv");
/// assert!(normalize_guest_path("../etc/passwd", false).is_err());
/// assert!(normalize_guest_path("/etc/passwd", false).is_err());
/// ```
pub fn normalize_guest_path(path: &str, allow_home: bool) -> Result<String, ValidationError> {
    if let Some(offset) = path.bytes().position(|b| b == 0) {
        return Err(ValidationError::PathNul { offset });
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(ValidationError::PathTooLong {
            len: path.len(),
            max: MAX_PATH_BYTES,
        });
    }
    if path.starts_with('/') {
        return Err(ValidationError::PathAbsolute {
            path: path.to_string(),
        });
    }
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ValidationError::PathEscapes {
                        path: path.to_string(),
                    });
                }
            }
            name if name.len() > MAX_PATH_COMPONENT_BYTES => {
                return Err(ValidationError::PathComponentTooLong {
                    component: name.chars().take(40).collect::<String>() + "…",
                    len: name.len(),
                    max: MAX_PATH_COMPONENT_BYTES,
                })
            }
            name => parts.push(name),
        }
    }
    if parts.is_empty() && !allow_home {
        return Err(ValidationError::PathEmpty);
    }
    Ok(parts.join("/"))
}

pub fn validate_idle_timeout(idle: Duration) -> Result<(), ValidationError> {
    if idle < MIN_IDLE_TIMEOUT || idle > MAX_IDLE_TIMEOUT {
        return Err(ValidationError::IdleTimeout {
            given_ms: idle.as_millis(),
            min_s: MIN_IDLE_TIMEOUT.as_secs(),
            max_s: MAX_IDLE_TIMEOUT.as_secs(),
        });
    }
    Ok(())
}

fn validate_env_name(name: &str) -> Result<(), ValidationError> {
    let bad = |reason| {
        Err(ValidationError::EnvName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_ENV_NAME_BYTES {
        return bad("it is longer than 128 bytes");
    }
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return bad("use letters, digits and '_', not starting with a digit");
    }
    let upper = name.to_ascii_uppercase();
    if BLOCKED_ENV.contains(&upper.as_str())
        || BLOCKED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
    {
        return Err(ValidationError::EnvBlocked {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn validate_env_value(name: &str, value: &str) -> Result<(), ValidationError> {
    let bad = |reason: String| {
        Err(ValidationError::EnvValue {
            name: name.to_string(),
            reason,
        })
    };
    if value.len() > MAX_ENV_VALUE_BYTES {
        return bad(format!(
            "it is {} bytes, over the {MAX_ENV_VALUE_BYTES}-byte limit",
            value.len()
        ));
    }
    // Tabs are ordinary text; every other control character (newline, escape, NUL, DEL, C1)
    // is refused because it breaks or smuggles through line- and terminal-oriented consumers.
    if let Some((i, c)) = value
        .char_indices()
        .find(|&(_, c)| c != '\t' && c.is_control())
    {
        return bad(format!("control character U+{:04X} at byte {i}", c as u32));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Language;

    fn req(code: &str) -> RunRequest {
        RunRequest::new(Language::Python, code)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepts_a_plain_request() {
        assert_eq!(validate(&req("print(1)")), Ok(()));
    }

    #[test]
    fn rejects_bad_code() {
        assert_eq!(validate(&req("")), Err(ValidationError::EmptyCode));
        assert_eq!(
            validate(&req(" \n\t \r\n")),
            Err(ValidationError::EmptyCode)
        );
        assert_eq!(
            validate(&req("print(1)\0")),
            Err(ValidationError::NulInCode { offset: 8 })
        );
        let big = "#".repeat(MAX_CODE_BYTES + 1);
        assert!(matches!(
            validate(&req(&big)),
            Err(ValidationError::CodeTooLarge { .. })
        ));
        let at_limit = "#".repeat(MAX_CODE_BYTES);
        assert_eq!(validate(&req(&at_limit)), Ok(()));
    }

    #[test]
    fn timeout_memory_and_disk_ranges() {
        for (t, ok) in [
            (0, false),
            (999, false),
            (1000, true),
            (300_000, true),
            (300_001, false),
        ] {
            let r = req("1").timeout(Duration::from_millis(t));
            assert_eq!(validate(&r).is_ok(), ok, "timeout {t} ms");
        }
        for (m, ok) in [
            (64, false),
            (127, false),
            (128, true),
            (16384, true),
            (16385, false),
        ] {
            let r = req("1").memory_mb(m);
            assert_eq!(validate(&r).is_ok(), ok, "memory {m}");
        }
        for (d, ok) in [
            (0, false),
            (63, false),
            (64, true),
            (1 << 20, true),
            ((1 << 20) + 1, false),
        ] {
            let r = req("1").disk_mb(d);
            assert_eq!(validate(&r).is_ok(), ok, "disk {d}");
            if !ok {
                assert_eq!(validate(&r).unwrap_err().field(), "disk");
            }
        }
    }

    #[test]
    fn env_names() {
        for name in ["", "1A", "A-B", "A B", "A=B", "é"] {
            let r = req("1").env(env(&[(name, "x")]));
            assert!(
                matches!(validate(&r), Err(ValidationError::EnvName { .. })),
                "{name:?}"
            );
        }
        for name in [
            "LD_PRELOAD",
            "ld_library_path",
            "BASH_ENV",
            "BASH_FUNC_f%%",
            "NODE_OPTIONS",
        ] {
            let r = req("1").env(env(&[(name, "x")]));
            let err = validate(&r).unwrap_err();
            assert_eq!(err.field(), "env");
            assert!(
                matches!(
                    err,
                    ValidationError::EnvBlocked { .. } | ValidationError::EnvName { .. }
                ),
                "{name}"
            );
        }
        let r = req("1").env(env(&[("A", "1"), ("A", "2")]));
        assert!(matches!(
            validate(&r),
            Err(ValidationError::EnvDuplicate { .. })
        ));
        assert_eq!(
            validate(&req("1").env(env(&[("_A1", "x"), ("B", "")]))),
            Ok(())
        );
    }

    #[test]
    fn extensions_must_fit_the_language() {
        assert_eq!(validate(&req("1").extension("py")), Ok(()));
        let js = RunRequest::new(Language::Javascript, "1").extension("tsx");
        assert_eq!(validate(&js), Ok(()));
        for bad in ["ts", "../x", "", "PY"] {
            let err = validate(&req("1").extension(bad)).unwrap_err();
            assert_eq!(err.field(), "extension", "{bad}");
        }
    }

    #[test]
    fn guest_paths() {
        let ok = |p: &str| normalize_guest_path(p, false).unwrap();
        assert_eq!(ok("a.txt"), "a.txt");
        assert_eq!(ok("a/./b//c/"), "a/b/c");
        assert_eq!(ok("a/b/../../c"), "c");
        assert_eq!(ok("..."), "...");
        assert_eq!(ok(&"x".repeat(255)), "x".repeat(255));
        assert_eq!(normalize_guest_path("", true).unwrap(), "");
        assert_eq!(normalize_guest_path("a/..", true).unwrap(), "");
        let err = |p: &str| normalize_guest_path(p, false).unwrap_err();
        assert_eq!(err(""), ValidationError::PathEmpty);
        assert_eq!(err("a/.."), ValidationError::PathEmpty);
        assert!(matches!(
            err("/etc/x"),
            ValidationError::PathAbsolute { .. }
        ));
        assert!(matches!(
            err("../../etc/x"),
            ValidationError::PathEscapes { .. }
        ));
        assert!(matches!(
            err("a/../../x"),
            ValidationError::PathEscapes { .. }
        ));
        assert!(matches!(
            err("a\0b"),
            ValidationError::PathNul { offset: 1 }
        ));
        assert!(matches!(
            err(&"x".repeat(256)),
            ValidationError::PathComponentTooLong { len: 256, .. }
        ));
        let long = vec!["d"; 2049].join("/");
        assert!(matches!(err(&long), ValidationError::PathTooLong { .. }));
        assert_eq!(err("/x").field(), "path");
    }

    #[test]
    fn env_values() {
        for value in ["a\nb", "a\rb", "\u{1b}[31m", "a\u{7f}", "a\u{85}"] {
            let r = req("1").env(env(&[("A", value)]));
            assert!(
                matches!(validate(&r), Err(ValidationError::EnvValue { .. })),
                "{value:?}"
            );
        }
        assert_eq!(
            validate(&req("1").env(env(&[("A", "tab\there €")]))),
            Ok(())
        );
        // Each value within its limit, all of them together over the total.
        let many: Vec<(String, String)> = (0..MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), "v".repeat(MAX_ENV_VALUE_BYTES)))
            .collect();
        assert!(matches!(
            validate(&req("1").env(many)),
            Err(ValidationError::EnvTooLarge { .. })
        ));
        let long = "x".repeat(MAX_ENV_VALUE_BYTES + 1);
        assert!(matches!(
            validate(&req("1").env(vec![("A".into(), long)])),
            Err(ValidationError::EnvValue { .. })
        ));
    }
}
