//! The targets the archive carries, and the check that each executable in
//! it is one a host of that target can start: the right format and CPU, and
//! nothing it needs at run time that such a host may lack (Linux: no
//! dynamic loader or shared library at all; macOS: only system libraries
//! and frameworks, a minimum macOS no newer than the provider claims, and a
//! code signature on arm64, which the kernel demands there; Windows: only
//! system DLLs).

use anyhow::{bail, Context as _, Result};
use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::read::macho::{LoadCommandVariant, MachHeader, MachOFile64};
use object::read::pe::PeFile64;
use object::{Architecture, BinaryFormat, Endianness, Object as _};
use sha2::{Digest as _, Sha256};

/// One target: the name a v1 host looks up (`{ARCH}-{OS}` of its machine,
/// from Rust's `std::env::consts`), and how the provider is built for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub host_name: &'static str,
    pub rust_triple: &'static str,
    /// The executable's file name suffix (`.exe` on Windows).
    pub exe_suffix: &'static str,
    /// Oldest macOS the executable runs on (`MACOSX_DEPLOYMENT_TARGET`).
    pub macos_min: Option<&'static str>,
}

/// Every target of the archive: those wasmCloud's own providers ship. The
/// Linux ones are static (musl), so that they run whatever the host's libc.
pub const TARGETS: [Target; 5] = [
    Target {
        host_name: "x86_64-linux",
        rust_triple: "x86_64-unknown-linux-musl",
        exe_suffix: "",
        macos_min: None,
    },
    Target {
        host_name: "aarch64-linux",
        rust_triple: "aarch64-unknown-linux-musl",
        exe_suffix: "",
        macos_min: None,
    },
    Target {
        host_name: "x86_64-macos",
        rust_triple: "x86_64-apple-darwin",
        exe_suffix: "",
        macos_min: Some("10.12"),
    },
    Target {
        host_name: "aarch64-macos",
        rust_triple: "aarch64-apple-darwin",
        exe_suffix: "",
        macos_min: Some("11.0"),
    },
    Target {
        host_name: "x86_64-windows",
        rust_triple: "x86_64-pc-windows-gnu",
        exe_suffix: ".exe",
        macos_min: None,
    },
];

/// The target named `host_name`.
pub fn target(host_name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.host_name == host_name)
}

/// DLLs every Windows 10 and later has (besides the `api-ms-win-*` API
/// sets of the universal C runtime).
const WINDOWS_SYSTEM_DLLS: &[&str] = &[
    "advapi32.dll",
    "bcrypt.dll",
    "bcryptprimitives.dll",
    "crypt32.dll",
    "kernel32.dll",
    "ncrypt.dll",
    "ntdll.dll",
    "ole32.dll",
    "secur32.dll",
    "shell32.dll",
    "user32.dll",
    "userenv.dll",
    "ws2_32.dll",
];

/// LC_CODE_SIGNATURE.
const LC_CODE_SIGNATURE: u32 = 0x1d;

/// Checks that `bytes` is an executable a host of `target` can start, and
/// describes it in a line.
pub fn check_executable(target: &Target, bytes: &[u8]) -> Result<String> {
    let file = object::File::parse(bytes)
        .with_context(|| format!("{}: not an executable", target.host_name))?;
    let (format, arch) = expected(target)?;
    if file.format() != format || file.architecture() != arch {
        bail!(
            "{}: {:?} {:?}, not {format:?} {arch:?}",
            target.host_name,
            file.format(),
            file.architecture()
        );
    }
    let size = format!("{:.1} MB", bytes.len() as f64 / 1e6);
    let what = match format {
        BinaryFormat::Elf => check_static_elf(bytes)?,
        BinaryFormat::MachO => check_macho(target, bytes)?,
        BinaryFormat::Pe => check_pe(bytes)?,
        other => bail!("{}: unexpected format {other:?}", target.host_name),
    };
    Ok(format!("{}: {what}, {size}", target.host_name))
}

fn expected(target: &Target) -> Result<(BinaryFormat, Architecture)> {
    let (arch, os) = target
        .host_name
        .split_once('-')
        .context("target name is not {arch}-{os}")?;
    let arch = match arch {
        "x86_64" => Architecture::X86_64,
        "aarch64" => Architecture::Aarch64,
        other => bail!("unknown CPU {other:?}"),
    };
    let format = match os {
        "linux" => BinaryFormat::Elf,
        "macos" => BinaryFormat::MachO,
        "windows" => BinaryFormat::Pe,
        other => bail!("unknown OS {other:?}"),
    };
    Ok((format, arch))
}

/// A static ELF: no program interpreter (dynamic loader) and nothing
/// imported from a shared library.
fn check_static_elf(bytes: &[u8]) -> Result<String> {
    let file = ElfFile64::<Endianness>::parse(bytes).context("not a 64-bit ELF")?;
    let endian = file.endian();
    let interpreter = file
        .elf_program_headers()
        .iter()
        .any(|header| header.p_type(endian) == object::elf::PT_INTERP);
    let imports = file.imports().context("cannot read the ELF imports")?;
    if interpreter || !imports.is_empty() {
        bail!(
            "ELF is dynamically linked ({} imported symbols, interpreter: {interpreter})",
            imports.len()
        );
    }
    Ok(format!("ELF {:?}, statically linked", file.architecture()))
}

/// A Mach-O that loads only system libraries and frameworks, runs on the
/// macOS the target claims, and (arm64) carries a code signature.
fn check_macho(target: &Target, bytes: &[u8]) -> Result<String> {
    let file = MachOFile64::<Endianness>::parse(bytes).context("not a 64-bit Mach-O")?;
    let endian = file.endian();
    let mut dylibs = Vec::new();
    let mut min_os = None;
    let mut signature = None;
    let mut commands = file.macho_load_commands()?;
    while let Some(command) = commands.next()? {
        match command.variant()? {
            LoadCommandVariant::LinkeditData(data) if command.cmd() == LC_CODE_SIGNATURE => {
                signature = Some((data.dataoff.get(endian), data.datasize.get(endian)));
            }
            LoadCommandVariant::Dylib(dylib) => {
                let name = command.string(endian, dylib.dylib.name)?;
                dylibs.push(String::from_utf8_lossy(name).into_owned());
            }
            LoadCommandVariant::BuildVersion(build) => min_os = Some(build.minos.get(endian)),
            LoadCommandVariant::VersionMin(version) => min_os = Some(version.version.get(endian)),
            _ => {}
        }
    }
    if let Some(outside) = dylibs
        .iter()
        .find(|d| !d.starts_with("/usr/lib/") && !d.starts_with("/System/Library/"))
    {
        bail!("Mach-O loads {outside}, which is not part of macOS");
    }
    let claimed = target
        .macos_min
        .context("a macOS target without a minimum")?;
    let min_os = min_os.context("Mach-O without a minimum macOS version")?;
    let found = format!("{}.{}", min_os >> 16, (min_os >> 8) & 0xff);
    if version_number(&found) > version_number(claimed) {
        bail!("Mach-O needs macOS {found}, newer than the {claimed} it is built for");
    }
    let cpu = file.macho_header().cputype(endian);
    let signed = match signature {
        Some((offset, size)) => {
            check_code_signature(bytes, offset as usize, size as usize)?;
            true
        }
        None if cpu == object::macho::CPU_TYPE_ARM64 => {
            bail!("arm64 Mach-O without a code signature: macOS would not run it")
        }
        None => false,
    };
    let frameworks: Vec<_> = dylibs
        .iter()
        .filter_map(|d| d.strip_prefix("/System/Library/Frameworks/"))
        .filter_map(|d| d.split('.').next())
        .collect();
    Ok(format!(
        "Mach-O {:?}, macOS {found}+, frameworks {}{}",
        object::File::parse(bytes)?.architecture(),
        frameworks.join(","),
        if signed { ", ad-hoc signed" } else { "" }
    ))
}

/// Code signature blobs (big-endian magics).
const CSMAGIC_EMBEDDED_SIGNATURE: u32 = 0xfade_0cc0;
const CSMAGIC_CODEDIRECTORY: u32 = 0xfade_0c02;
const CS_HASHTYPE_SHA256: u8 = 2;

/// Checks an embedded ad-hoc signature as the arm64 kernel does: the code
/// directory's hash of every page must match the file (a change to the
/// file after linking, stripping for one, breaks it).
fn check_code_signature(bytes: &[u8], offset: usize, size: usize) -> Result<()> {
    let blob = bytes
        .get(offset..offset + size)
        .context("code signature outside the file")?;
    let be32 = |at: usize| -> Result<u32> {
        let word = blob.get(at..at + 4).context("code signature cut short")?;
        Ok(u32::from_be_bytes(word.try_into()?))
    };
    if be32(0)? != CSMAGIC_EMBEDDED_SIGNATURE {
        bail!("code signature is not an embedded signature");
    }
    for index in 0..be32(8)? as usize {
        let at = be32(12 + 8 * index + 4)? as usize;
        if be32(at)? != CSMAGIC_CODEDIRECTORY {
            continue;
        }
        let hash_offset = be32(at + 16)? as usize;
        let code_pages = be32(at + 28)? as usize;
        let code_limit = be32(at + 32)? as usize;
        let header = blob
            .get(at + 36..at + 40)
            .context("code directory cut short")?;
        let (hash_size, hash_type, page_shift) = (header[0] as usize, header[1], header[3]);
        if hash_type != CS_HASHTYPE_SHA256 || hash_size != 32 {
            bail!("code directory hash type {hash_type} is not SHA-256");
        }
        if code_limit != offset {
            bail!("the code signature covers {code_limit} bytes, not all {offset} before it");
        }
        let page = 1usize << page_shift;
        for number in 0..code_pages {
            let start = number * page;
            let data = &bytes[start..(start + page).min(code_limit)];
            let at_hash = at + hash_offset + number * hash_size;
            let want = blob
                .get(at_hash..at_hash + hash_size)
                .context("code directory cut short")?;
            if Sha256::digest(data).as_slice() != want {
                bail!(
                    "code signature does not match page {number}: the file changed after signing"
                );
            }
        }
        return Ok(());
    }
    bail!("code signature without a code directory")
}

fn version_number(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(u32::MAX));
    (parts.next().unwrap_or(u32::MAX), parts.next().unwrap_or(0))
}

/// A PE32+ console program that imports only Windows' own DLLs.
fn check_pe(bytes: &[u8]) -> Result<String> {
    let file = PeFile64::parse(bytes).context("not a PE32+ executable")?;
    let mut dlls: Vec<String> = file
        .imports()?
        .iter()
        .map(|import| String::from_utf8_lossy(import.library()).to_ascii_lowercase())
        .collect();
    dlls.sort();
    dlls.dedup();
    if let Some(foreign) = dlls
        .iter()
        .find(|d| !d.starts_with("api-ms-win-") && !WINDOWS_SYSTEM_DLLS.contains(&d.as_str()))
    {
        bail!("PE imports {foreign}, which Windows does not ship");
    }
    let subsystem = file
        .nt_headers()
        .optional_header
        .subsystem
        .get(object::LittleEndian);
    if subsystem != object::pe::IMAGE_SUBSYSTEM_WINDOWS_CUI {
        bail!("PE is not a console program (subsystem {subsystem})");
    }
    Ok(format!("PE32+ x86-64 console, {} system DLLs", dlls.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_name_is_the_hosts_arch_and_os() {
        for target in TARGETS {
            let (arch, os) = target.host_name.split_once('-').unwrap();
            assert!(target.rust_triple.starts_with(arch), "{target:?}");
            assert!(expected(&target).is_ok(), "{target:?}");
            assert_eq!(target.macos_min.is_some(), os == "macos", "{target:?}");
        }
    }

    #[test]
    fn a_script_is_not_an_executable_for_any_target() {
        for target in TARGETS {
            let err = check_executable(&target, b"#!/bin/sh\necho hi\n").unwrap_err();
            assert!(format!("{err:#}").contains("not an executable"), "{err:#}");
        }
    }

    #[test]
    fn the_test_binary_itself_is_refused_for_every_other_target() {
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let native = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
        for target in TARGETS.iter().filter(|t| t.host_name != native) {
            assert!(check_executable(target, &this).is_err(), "{target:?}");
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_glibc_executable_is_refused_as_not_static() {
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let native = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
        let err = check_executable(target(&native).unwrap(), &this).unwrap_err();
        assert!(format!("{err:#}").contains("dynamically linked"), "{err:#}");
    }

    #[test]
    fn versions_compare_by_number() {
        assert!(version_number("10.12") > version_number("10.9"));
        assert!(version_number("11.0") > version_number("10.15"));
    }
}
