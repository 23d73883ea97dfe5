//! Where the caller's executable and login uid are in the running kernel's
//! structures, read from its BTF (`/sys/kernel/btf/vmlinux`) at load.
//!
//! The connect programs follow `current->mm->exe_file->f_inode` and read
//! `current->loginuid` at these offsets. rustc emits no CO-RE relocations for
//! eBPF, so the daemon does the relocation itself: the offsets are globals of
//! the object, set before it is loaded.

use std::path::{Path, PathBuf};

use btfparse::{Offset, Readable, TypeInformation};
use proxy_common::TaskOffsets;

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the offsets could not be found.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("cannot read the kernel's BTF at {path}: {source}; jitproxy needs a kernel built with CONFIG_DEBUG_INFO_BTF")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the kernel's BTF at {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the kernel's BTF has no `{0}`: this kernel is not supported (jitproxy reads it to record the caller's executable)")]
    Field(String),
}

/// Reads the offsets from the BTF file at `path`.
pub fn task_offsets(path: &Path) -> Result<TaskOffsets, OffsetsError> {
    let bytes = std::fs::read(path).map_err(|source| OffsetsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let types = TypeInformation::new(&Bytes(&bytes)).map_err(|e| OffsetsError::Parse {
        path: path.to_owned(),
        message: format!("{e:?}"),
    })?;
    let field = |ty: &str, member: &str, size: usize| field(&types, ty, member, size);
    Ok(TaskOffsets {
        task_mm: field("task_struct", "mm", 8)?,
        // `loginuid` exists only with CONFIG_AUDIT; without it there is no
        // login uid to record (nor a /proc/PID/loginuid).
        task_loginuid: field("task_struct", "loginuid", 4).unwrap_or(TaskOffsets::NO_LOGIN_UID),
        mm_exe_file: field("mm_struct", "exe_file", 8)?,
        file_inode: field("file", "f_inode", 8)?,
        inode_ino: field("inode", "i_ino", 8)?,
        inode_sb: field("inode", "i_sb", 8)?,
        sb_dev: field("super_block", "s_dev", 4)?,
        valid: 1,
    })
}

/// Byte offset of `ty.member` (found also inside anonymous structs and
/// unions), checking that the member is `size` bytes: the programs read it
/// as such.
fn field(
    types: &TypeInformation,
    ty: &str,
    member: &str,
    size: usize,
) -> Result<u32, OffsetsError> {
    let missing = || OffsetsError::Field(format!("{ty}.{member}"));
    let id = types.id_of(ty).ok_or_else(missing)?;
    let (member_id, offset) = types.offset_of(id, member).map_err(|_| missing())?;
    let Offset::ByteOffset(offset) = offset else {
        return Err(missing());
    };
    match types.size_of(member_id) {
        Ok(s) if s == size => Ok(offset),
        _ => Err(OffsetsError::Field(format!(
            "{ty}.{member} of {size} bytes"
        ))),
    }
}

/// BTF bytes in memory, as the parser reads them.
struct Bytes<'a>(&'a [u8]);

impl Readable for Bytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buffer.len())?))
            .and_then(|range| self.0.get(range));
        match range {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read past the end of the BTF data",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kernel (every supported one has BTF): the offsets are
    /// found, distinct where they must be, and inside their structures.
    #[test]
    fn offsets_of_the_running_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let off = task_offsets(path).expect("offsets");
        assert_eq!(off.valid, 1);
        assert_ne!(off.task_mm, off.task_loginuid);
        assert_ne!(off.inode_ino, off.inode_sb);
        assert!(off.task_mm > 0 && off.mm_exe_file > 0 && off.inode_sb > 0);
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("jp-btf-{}", std::process::id()));
        std::fs::write(&dir, [0x9f, 0xeb, 1, 0, 24, 0]).unwrap();
        let err = task_offsets(&dir).unwrap_err();
        std::fs::remove_file(&dir).ok();
        assert!(matches!(err, OffsetsError::Parse { .. }), "{err}");
    }
}
