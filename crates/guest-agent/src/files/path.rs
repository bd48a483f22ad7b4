//! Re-checks the paths the host sends. The host normalises them already; the guest checks
//! again so that a host bug can never turn into a path the kernel interprets differently
//! from what the host showed the user.

use super::FileError;
use protocol::FileErrorKind;
use std::ffi::CString;

/// Linux's `PATH_MAX`, terminating NUL excluded.
pub const MAX_PATH: usize = 4096;
/// Linux's `NAME_MAX`: the longest name any of our filesystems accepts.
pub const MAX_COMPONENT: usize = 255;

/// A path relative to the home directory that passed [`validate`].
#[derive(Debug, Clone)]
pub struct RelPath {
    text: String,
}

impl RelPath {
    /// The path as the host sent it, for messages.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// For the kernel: `.` stands for the home directory itself, since `openat2` has no
    /// `AT_EMPTY_PATH`.
    pub fn to_cstring(&self) -> CString {
        cstring(if self.text.is_empty() {
            "."
        } else {
            &self.text
        })
    }

    /// Splits off the last component: the parent (possibly empty, meaning home) and the name.
    /// `None` for the empty path.
    pub fn split_last(&self) -> Option<(&str, &str)> {
        if self.text.is_empty() {
            return None;
        }
        Some(match self.text.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", &self.text),
        })
    }
}

/// Builds a C string from text already known to hold no NUL.
pub fn cstring(text: &str) -> CString {
    // Validation rejected NULs, so this cannot fail; an empty string is the harmless fallback
    // (the kernel answers ENOENT) should that ever change.
    CString::new(text).unwrap_or_default()
}

/// Accepts exactly what the host is supposed to send: a relative path of non-empty
/// components separated by single `/`, none of them `.` or `..`, no NUL, within Linux's
/// length limits. The empty path (the home directory itself) only when `allow_empty`.
pub fn validate(path: &str, allow_empty: bool) -> Result<RelPath, FileError> {
    let bad = |why: &str| {
        Err(FileError::new(
            FileErrorKind::InvalidPath,
            format!("invalid path {}: {why}", super::shown(path)),
        ))
    };
    if path.is_empty() {
        return if allow_empty {
            Ok(RelPath {
                text: String::new(),
            })
        } else {
            bad("empty")
        };
    }
    if path.len() > MAX_PATH {
        return bad(&format!("longer than {MAX_PATH} bytes"));
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    if path.starts_with('/') {
        return bad("absolute; paths are relative to the home directory");
    }
    for component in path.split('/') {
        match component {
            "" => return bad("empty component (doubled or trailing '/')"),
            "." | ".." => return bad("'.' and '..' are not allowed"),
            c if c.len() > MAX_COMPONENT => {
                return bad(&format!("a component is longer than {MAX_COMPONENT} bytes"))
            }
            _ => {}
        }
    }
    Ok(RelPath {
        text: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(path: &str) -> bool {
        matches!(validate(path, true), Err(e) if e.kind == FileErrorKind::InvalidPath)
    }

    #[test]
    fn accepts_normal_paths() {
        for p in ["a", "a/b.txt", "...", "a/..b/c..", ".hidden/x", "ünï/cøde"] {
            assert!(validate(p, false).is_ok(), "{p}");
        }
        assert!(validate(&"a".repeat(MAX_COMPONENT), false).is_ok());
        let long = vec!["b".repeat(MAX_COMPONENT); 16].join("/");
        assert!(long.len() <= MAX_PATH);
        assert!(validate(&long, false).is_ok());
    }

    #[test]
    fn rejects_the_rest() {
        for p in [
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/..",
            "./a",
            "a/.",
            "a//b",
            "a/",
            "/",
            "a\0b",
        ] {
            assert!(invalid(p), "{p:?}");
        }
        assert!(invalid(&"a".repeat(MAX_COMPONENT + 1)));
        assert!(invalid(&"a/".repeat(MAX_PATH / 2 + 1)));
        assert!(validate("", true).is_ok());
        assert!(matches!(validate("", false), Err(e) if e.kind == FileErrorKind::InvalidPath));
    }

    #[test]
    fn splits_off_the_name() {
        let p = validate("a/b/c", false).unwrap();
        assert_eq!(p.split_last(), Some(("a/b", "c")));
        assert_eq!(validate("c", false).unwrap().split_last(), Some(("", "c")));
        assert_eq!(validate("", true).unwrap().split_last(), None);
        assert_eq!(validate("", true).unwrap().to_cstring().as_bytes(), b".");
    }
}
