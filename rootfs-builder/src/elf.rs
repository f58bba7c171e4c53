//! Just enough ELF reading to answer the questions the builder has about
//! binaries it puts into an image: "is this a static executable?" (busybox and
//! the agent must run with no loader or shared libraries in the initrd) and
//! "what does this kernel module's `.modinfo` say?" (its `depends=` list is
//! how dependencies are found when a kernel package ships no `modules.dep`).
//!
//! Hand-rolled rather than pulling in a full object-file crate: it reads two
//! tables, bounds-checks every access and never panics on malformed input.

/// `PT_INTERP`: the program header naming the dynamic loader.
const PT_INTERP: u32 = 3;
/// `ET_EXEC` and `ET_DYN`: the object types that can be executed.
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// Why a byte string could not be read as ELF.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file (no \\x7fELF magic)")]
    NotElf,
    #[error("malformed ELF file: {0}")]
    Malformed(&'static str),
}

/// A parsed view of an ELF file's header.
#[derive(Debug, Clone, Copy)]
pub struct Elf<'a> {
    data: &'a [u8],
    is64: bool,
    little_endian: bool,
    e_type: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}

/// Whether `data` starts with the ELF magic.
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

impl<'a> Elf<'a> {
    /// Parses the ELF file header of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        if !is_elf(data) {
            return Err(ElfError::NotElf);
        }
        let class = *data.get(4).ok_or(ElfError::Malformed("truncated header"))?;
        let endian = *data.get(5).ok_or(ElfError::Malformed("truncated header"))?;
        let is64 = match class {
            1 => false,
            2 => true,
            _ => return Err(ElfError::Malformed("unknown ELF class")),
        };
        let little_endian = match endian {
            1 => true,
            2 => false,
            _ => return Err(ElfError::Malformed("unknown byte order")),
        };
        let mut elf = Elf {
            data,
            is64,
            little_endian,
            e_type: 0,
            phoff: 0,
            phentsize: 0,
            phnum: 0,
            shoff: 0,
            shentsize: 0,
            shnum: 0,
            shstrndx: 0,
        };
        elf.e_type = elf.u16_at(16)?;
        if is64 {
            elf.phoff = elf.u64_at(32)?;
            elf.shoff = elf.u64_at(40)?;
            elf.phentsize = elf.u16_at(54)?;
            elf.phnum = elf.u16_at(56)?;
            elf.shentsize = elf.u16_at(58)?;
            elf.shnum = elf.u16_at(60)?;
            elf.shstrndx = elf.u16_at(62)?;
        } else {
            elf.phoff = u64::from(elf.u32_at(28)?);
            elf.shoff = u64::from(elf.u32_at(32)?);
            elf.phentsize = elf.u16_at(42)?;
            elf.phnum = elf.u16_at(44)?;
            elf.shentsize = elf.u16_at(46)?;
            elf.shnum = elf.u16_at(48)?;
            elf.shstrndx = elf.u16_at(50)?;
        }
        Ok(elf)
    }

    /// Whether the object type is one the kernel can execute (`ET_EXEC`/`ET_DYN`).
    pub fn is_executable_type(&self) -> bool {
        self.e_type == ET_EXEC || self.e_type == ET_DYN
    }

    /// The program interpreter (dynamic loader) named by `PT_INTERP`, if any.
    /// A file without one is statically linked.
    pub fn interpreter(&self) -> Result<Option<String>, ElfError> {
        let min = if self.is64 { 56 } else { 32 };
        if self.phnum == 0 {
            return Ok(None);
        }
        if usize::from(self.phentsize) < min {
            return Err(ElfError::Malformed("program header entries too small"));
        }
        for i in 0..u64::from(self.phnum) {
            let base = offset(self.phoff, i, self.phentsize)?;
            if self.u32_at(base)? != PT_INTERP {
                continue;
            }
            let (off, size) = if self.is64 {
                (self.u64_at(field(base, 8)?)?, self.u64_at(field(base, 32)?)?)
            } else {
                (u64::from(self.u32_at(field(base, 4)?)?), u64::from(self.u32_at(field(base, 16)?)?))
            };
            let bytes = self.slice(off, size)?;
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            return Ok(Some(String::from_utf8_lossy(&bytes[..end]).into_owned()));
        }
        Ok(None)
    }

    /// The contents of the section called `name`, if present.
    pub fn section(&self, name: &str) -> Result<Option<&'a [u8]>, ElfError> {
        if self.shoff == 0 || self.shnum == 0 {
            return Ok(None);
        }
        let min = if self.is64 { 64 } else { 40 };
        if usize::from(self.shentsize) < min {
            return Err(ElfError::Malformed("section header entries too small"));
        }
        if self.shstrndx >= self.shnum {
            return Err(ElfError::Malformed("section name table index out of range"));
        }
        let (strtab_off, strtab_size) = self.section_range(u64::from(self.shstrndx))?;
        let strtab = self.slice(strtab_off, strtab_size)?;
        for i in 0..u64::from(self.shnum) {
            let base = offset(self.shoff, i, self.shentsize)?;
            let name_off =
                usize::try_from(self.u32_at(base)?).map_err(|_| ElfError::Malformed("section name offset"))?;
            let Some(rest) = strtab.get(name_off..) else {
                return Err(ElfError::Malformed("section name offset out of range"));
            };
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            if &rest[..end] == name.as_bytes() {
                // SHT_NOBITS sections occupy no bytes in the file.
                if self.u32_at(field(base, 4)?)? == 8 {
                    return Ok(Some(&[]));
                }
                let (off, size) = self.section_range(i)?;
                return self.slice(off, size).map(Some);
            }
        }
        Ok(None)
    }

    fn section_range(&self, index: u64) -> Result<(u64, u64), ElfError> {
        let base = offset(self.shoff, index, self.shentsize)?;
        if self.is64 {
            Ok((self.u64_at(field(base, 24)?)?, self.u64_at(field(base, 32)?)?))
        } else {
            Ok((u64::from(self.u32_at(field(base, 16)?)?), u64::from(self.u32_at(field(base, 20)?)?)))
        }
    }

    fn slice(&self, off: u64, size: u64) -> Result<&'a [u8], ElfError> {
        let start = usize::try_from(off).map_err(|_| ElfError::Malformed("offset too large"))?;
        let len = usize::try_from(size).map_err(|_| ElfError::Malformed("size too large"))?;
        let end = start.checked_add(len).ok_or(ElfError::Malformed("range overflows"))?;
        self.data.get(start..end).ok_or(ElfError::Malformed("range beyond end of file"))
    }

    fn bytes<const N: usize>(&self, off: u64) -> Result<[u8; N], ElfError> {
        let s = self.slice(off, N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u16_at(&self, off: u64) -> Result<u16, ElfError> {
        let b = self.bytes::<2>(off)?;
        Ok(if self.little_endian { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }

    fn u32_at(&self, off: u64) -> Result<u32, ElfError> {
        let b = self.bytes::<4>(off)?;
        Ok(if self.little_endian { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }

    fn u64_at(&self, off: u64) -> Result<u64, ElfError> {
        let b = self.bytes::<8>(off)?;
        Ok(if self.little_endian { u64::from_le_bytes(b) } else { u64::from_be_bytes(b) })
    }
}

fn offset(table: u64, index: u64, entsize: u16) -> Result<u64, ElfError> {
    index
        .checked_mul(u64::from(entsize))
        .and_then(|o| o.checked_add(table))
        .ok_or(ElfError::Malformed("table offset overflows"))
}

/// The offset of a field `delta` bytes into the table entry at `base` (an entry the file
/// places near the end of the address space must not wrap around).
fn field(base: u64, delta: u64) -> Result<u64, ElfError> {
    base.checked_add(delta).ok_or(ElfError::Malformed("field offset overflows"))
}

/// The `key=value` strings of a kernel module's `.modinfo` section.
pub fn modinfo(data: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    let elf = Elf::parse(data)?;
    let Some(section) = elf.section(".modinfo")? else {
        return Ok(Vec::new());
    };
    Ok(section
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// Builders for synthetic ELF files, shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod testutil {
    /// A minimal little-endian ELF64 file of type `e_type` with an optional
    /// `PT_INTERP` program header and an optional `.modinfo` section.
    pub fn build(e_type: u16, interp: Option<&str>, modinfo: Option<&[u8]>) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little endian
        f[6] = 1; // EV_CURRENT
        f[16..18].copy_from_slice(&e_type.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize

        // Program headers (one PT_LOAD, plus PT_INTERP if asked).
        let mut phdrs = vec![(1u32, 0u64, 0u64)];
        let interp_bytes = interp.map(|i| {
            let mut b = i.as_bytes().to_vec();
            b.push(0);
            b
        });
        let phoff = f.len() as u64;
        let phnum = 1 + usize::from(interp.is_some());
        let data_start = phoff + 56 * phnum as u64;
        if let Some(b) = &interp_bytes {
            phdrs.push((3, data_start, b.len() as u64));
        }
        for (p_type, off, size) in &phdrs {
            let mut ph = vec![0u8; 56];
            ph[0..4].copy_from_slice(&p_type.to_le_bytes());
            ph[8..16].copy_from_slice(&off.to_le_bytes());
            ph[32..40].copy_from_slice(&size.to_le_bytes());
            ph[40..48].copy_from_slice(&size.to_le_bytes());
            f.extend(ph);
        }
        if let Some(b) = &interp_bytes {
            f.extend(b);
        }
        f[32..40].copy_from_slice(&phoff.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());

        // Sections: null, .modinfo (optional), .shstrtab.
        let shstrtab: &[u8] = b"\0.modinfo\0.shstrtab\0";
        let mut sections: Vec<(u32, u32, u64, u64)> = vec![(0, 0, 0, 0)];
        if let Some(m) = modinfo {
            let off = f.len() as u64;
            f.extend(m);
            sections.push((1, 1, off, m.len() as u64));
        }
        let off = f.len() as u64;
        f.extend(shstrtab);
        sections.push((10, 3, off, shstrtab.len() as u64));
        while f.len() % 8 != 0 {
            f.push(0);
        }
        let shoff = f.len() as u64;
        for (name, sh_type, off, size) in &sections {
            let mut sh = vec![0u8; 64];
            sh[0..4].copy_from_slice(&name.to_le_bytes());
            sh[4..8].copy_from_slice(&sh_type.to_le_bytes());
            sh[24..32].copy_from_slice(&off.to_le_bytes());
            sh[32..40].copy_from_slice(&size.to_le_bytes());
            f.extend(sh);
        }
        f[40..48].copy_from_slice(&shoff.to_le_bytes());
        f[58..60].copy_from_slice(&64u16.to_le_bytes());
        f[60..62].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        f[62..64].copy_from_slice(&((sections.len() - 1) as u16).to_le_bytes());
        f
    }

    /// A fake relocatable kernel module with the given `.modinfo` strings.
    pub fn fake_module(name: &str, depends: &[&str]) -> Vec<u8> {
        let info = format!(
            "license=GPL\0depends={}\0retpoline=Y\0name={name}\0vermagic=9.9.9 SMP mod_unload\0",
            depends.join(",")
        );
        build(1, None, Some(info.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn static_and_dynamic_executables() {
        let st = build(2, None, None);
        let elf = Elf::parse(&st).unwrap();
        assert!(elf.is_executable_type());
        assert_eq!(elf.interpreter().unwrap(), None);

        let dy = build(3, Some("/lib64/ld-linux-x86-64.so.2"), None);
        let elf = Elf::parse(&dy).unwrap();
        assert_eq!(elf.interpreter().unwrap().as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
    }

    #[test]
    fn modinfo_of_fake_module() {
        let m = fake_module("virtio_pci", &["virtio", "virtio_ring"]);
        let info = modinfo(&m).unwrap();
        assert!(info.contains(&("depends".into(), "virtio,virtio_ring".into())));
        assert!(info.contains(&("name".into(), "virtio_pci".into())));
        assert!(!Elf::parse(&m).unwrap().is_executable_type());
    }

    #[test]
    fn garbage_never_panics() {
        assert_eq!(Elf::parse(b"#!/bin/sh\n").unwrap_err(), ElfError::NotElf);
        assert!(Elf::parse(b"\x7fELF").is_err());
        let good = fake_module("x", &[]);
        // Every truncation of a valid file must fail cleanly (or succeed), never panic.
        for len in 0..good.len() {
            let _ = modinfo(&good[..len]);
            if let Ok(elf) = Elf::parse(&good[..len]) {
                let _ = elf.interpreter();
            }
        }
        // Corrupt every byte of the header region in turn.
        for i in 0..64 {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = modinfo(&bad);
            if let Ok(elf) = Elf::parse(&bad) {
                let _ = elf.interpreter();
            }
        }
    }

    #[test]
    fn real_module_modinfo() {
        let path = crate::modules::tests::real_tree().0.join("kernel/drivers/virtio/virtio_pci.ko");
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let info = modinfo(&data).unwrap();
        let depends = info.iter().find(|(k, _)| k == "depends").map(|(_, v)| v.clone()).unwrap();
        let mut deps: Vec<&str> = depends.split(',').collect();
        deps.sort_unstable();
        assert_eq!(deps, ["virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring"]);
    }
}
