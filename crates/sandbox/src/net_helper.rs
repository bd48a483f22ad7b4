//! Where the `sbx-net` executable comes from. It is built with this crate (a static
//! executable, see `build.rs`) and embedded in it, so a program using the library needs
//! nothing installed beside it; on first use it is written to `<cache>/bin/`, named by its
//! content hash so that different versions never overwrite one another.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::PermanentError;

static EMBEDDED: &[u8] = include_bytes!(env!("SBX_NET_HELPER_PATH"));
const EMBEDDED_HASH: &str = env!("SBX_NET_HELPER_HASH");

/// The helper to run: `explicit` when set (`$SBX_NET_HELPER`), else the embedded one,
/// installed under `cache_dir` if it is not there yet.
pub(crate) fn helper_path(
    explicit: Option<&Path>,
    cache_dir: &Path,
) -> Result<PathBuf, PermanentError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let dir = cache_dir.join("bin");
    let path = dir.join(format!("sbx-net-{EMBEDDED_HASH}"));
    if path.is_file() {
        return Ok(path);
    }
    let io = |source| PermanentError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    // Written under a temporary name and renamed: another process may be installing the
    // same file at the same moment, and neither may ever run a half-written executable.
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    tmp.write_all(EMBEDDED).map_err(io)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(path)
}
