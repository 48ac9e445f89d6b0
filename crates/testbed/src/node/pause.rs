//! The sandbox image: a static program that only sleeps, imported into the engine.

use anyhow::{Context as _, Result, bail};
use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use futures_util::TryStreamExt;

use super::PAUSE_IMAGE;
use crate::images::append_executable;

/// A static x86-64 ELF executable: `loop { pause() }`. 129 bytes: the ELF
/// header, one PT_LOAD program header mapping the file at 0x400000, and
/// `mov eax, 34; syscall; jmp -9`.
pub(super) fn pause_program() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE: [u8; 9] = [0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
    let size = (64 + 56 + CODE.len()) as u64;
    let mut elf = Vec::with_capacity(size as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + 64 + 56).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no sections
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&CODE);
    elf
}

pub(super) async fn ensure_pause_image(docker: &Docker) -> Result<()> {
    if docker.inspect_image(PAUSE_IMAGE).await.is_ok() {
        return Ok(());
    }
    if !cfg!(target_arch = "x86_64") {
        bail!("the node agent's sandbox program is x86-64 only");
    }
    let program = pause_program();
    let mut tar = tar::Builder::new(Vec::new());
    append_executable(&mut tar, "pause", &program).context("building the sandbox image's layer")?;
    let layer = tar
        .into_inner()
        .context("building the sandbox image's layer")?;
    let (repo, tag) = PAUSE_IMAGE
        .split_once(':')
        .unwrap_or((PAUSE_IMAGE, "latest"));
    docker
        .create_image(
            Some(CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(repo.into()),
                tag: Some(tag.into()),
                ..Default::default()
            }),
            Some(bollard::body_full(layer.into())),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .with_context(|| format!("importing the sandbox image {PAUSE_IMAGE}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_program_is_a_129_byte_elf() {
        let p = pause_program();
        assert_eq!(p.len(), 129);
        assert_eq!(&p[..4], b"\x7fELF");
    }
}
