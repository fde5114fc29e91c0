//! What the fuzz targets share: arbitrary values of the library's types
//! drawn from the fuzzer's bytes.

use lazymmu::pgtable::format::{Attributes, MemoryType};
use libfuzzer_sys::arbitrary::{Result, Unstructured};

/// Leaf attributes, every field drawn, `key` at most `max_key`.
///
/// # Errors
/// When the bytes run out.
pub fn attributes(u: &mut Unstructured, max_key: u8) -> Result<Attributes> {
    let memory = *u.choose(&[
        MemoryType::WriteBack,
        MemoryType::WriteThrough,
        MemoryType::Uncached,
        MemoryType::Device,
    ])?;
    Ok(Attributes {
        writable: u.arbitrary()?,
        user: u.arbitrary()?,
        executable: u.arbitrary()?,
        global: u.arbitrary()?,
        dirty: u.arbitrary()?,
        accessed: u.arbitrary()?,
        key: u.int_in_range(0..=max_key)?,
        memory,
    })
}
