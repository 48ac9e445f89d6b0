//! Images made locally (nothing can be pulled here).

use std::io;
use std::process::{Command, Stdio};

use crate::programs::require;

/// Add `program` to `tar` as the executable file `path` (mode 0755).
pub(crate) fn append_executable(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    program: &[u8],
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(program.len() as u64);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, program)
}

/// `docker import` of a root filesystem holding Debian's static `/bin/busybox`
/// and a link to it for each of `applets`, as the image `name`: a base image
/// made locally, since none can be pulled here.
pub fn import_busybox(name: &str, applets: &[&str]) -> io::Result<()> {
    use std::io::Write as _;
    require("busybox")?;
    let busybox = std::fs::read("/bin/busybox")?;
    let mut tar = tar::Builder::new(Vec::new());
    append_executable(&mut tar, "bin/busybox", &busybox)?;
    for applet in applets {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let data = tar.into_inner()?;
    let mut child = Command::new("docker")
        .args(["import", "-", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&data)?;
    }
    if !child.wait()?.success() {
        return Err(io::Error::other(format!("docker import of {name} failed")));
    }
    Ok(())
}
