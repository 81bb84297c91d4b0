//! Atomic file writes (a crash mid-save never leaves a half-written file in place), reads
//! whose errors name the file, and JSON files through both.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::IoError;

/// Parse the JSON file at `path` into `T`; errors name the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, IoError> {
    serde_json::from_slice(&read(path)?).map_err(|source| IoError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `value` to `path` as pretty-printed JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), IoError> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| IoError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    atomic_write(path, &json)
}

/// Write `bytes` to `path` atomically: write a temporary sibling, flush it to disk, then rename
/// it over `path` (a rename within one directory is atomic on POSIX and NTFS).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let fs_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| IoError::Fs { path: p, source }
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir).map_err(fs_err(dir))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(IoError::Fs { path: tmp, source });
    }
    fs::rename(&tmp, path).map_err(fs_err(path))?;
    sync_dir(dir.unwrap_or(Path::new(".")))
}

/// Flush a directory's entries to disk, so a rename or a new file in it survives a power
/// loss (POSIX: `fsync` on the directory; elsewhere renames are durable once they return).
pub fn sync_dir(dir: &Path) -> Result<(), IoError> {
    if cfg!(unix) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| IoError::Fs {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// Whether `name` is a temporary of [`atomic_write`] (`.NAME.tmp-PID`): what a crash in the
/// middle of a write leaves behind, never a file a reader trusts.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Read a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, IoError> {
    fs::read(path).map_err(|source| IoError::Fs {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }
}
