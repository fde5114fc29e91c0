//! x86-64 5-level (LA57) tables in host memory: a mapping above the
//! 4-level limit of 128 TiB (and, refused, the same address in a 4-level
//! tree), a protection change that splits a 1 GiB page,
//! a fork, an unmap, and the walk of each.
//!
//! `cargo run -p lazymmu --example x86_64_5level`

use lazymmu::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host = Host::<X86_64_5Level>::new(PhysAddr(0x100_0000), 256);
    let tables = host.new_tables(SpaceId(1), VaRange::Lower)?;
    // 60 PiB: above the 128 TiB a 4-level tree reaches.
    let high = VirtAddr(0x00f0_0000_0000_0000);
    tables.map(
        high,
        PhysAddr(0x40_0000_0000),
        1 << 30,
        Attributes::user_data(),
        PageSize::Size1G,
    )?;
    let four = Host::<X86_64>::new(PhysAddr(0x100_0000), 4);
    let four = four.new_tables(SpaceId(1), VaRange::Lower)?;
    let refused = four.map(
        high,
        PhysAddr(0x40_0000_0000),
        1 << 30,
        Attributes::user_data(),
        PageSize::Size1G,
    );
    println!("4-level: {}", refused.unwrap_err());

    let mut gather = tables.gather();
    let protect = tables.protect(
        high.add(0x20_0000),
        0x1000,
        Protection::read_only(),
        &mut gather,
    )?;
    println!("protect: {protect:?}");
    let child = host.new_tables(SpaceId(2), VaRange::Lower)?;
    tables.copy_to(&child, high, 0x40_0000, CopyKind::Shared, &mut gather)?;
    tables.zap(high, 0x20_0000, &mut gather)?;
    drop(gather);

    for va in [high, high.add(0x20_0000), high.add(0x40_0000)] {
        match tables.translate(va) {
            Ok(t) => println!(
                "{:#x} -> {:#x} ({:?}, writable {})",
                va.0, t.phys.0, t.size, t.attrs.writable
            ),
            Err(error) => println!("{error}"),
        }
    }
    let t = child.translate(high)?;
    println!(
        "child still maps {:#x} -> {:#x} ({:?})",
        high.0, t.phys.0, t.size
    );
    println!("parent {:?}", tables.verify()?);
    println!("child  {:?}", child.verify()?);
    Ok(())
}
