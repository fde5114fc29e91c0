//! A process's tables in x86-64 4-level format, in host memory: map its
//! text and data, make the text read-only and executable, fork it
//! copy-on-write, unmap a page of the child, and translate as the walker
//! would.
//!
//! `cargo run -p lazymmu --example x86_64_4level`

use lazymmu::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host = Host::<X86_64>::new(PhysAddr(0x100_0000), 256);
    let parent = host.new_tables(SpaceId(1), VaRange::Lower)?;
    let (text, data) = (VirtAddr(0x40_0000), VirtAddr(0x60_0000));
    parent.map(
        text,
        PhysAddr(0x1000_0000),
        0x20_0000,
        Attributes::user_data(),
        PageSize::Size2M,
    )?;
    parent.map(
        data,
        PhysAddr(0x2000_0000),
        0x8000,
        Attributes::user_data(),
        PageSize::Size4K,
    )?;

    let mut gather = parent.gather();
    parent.protect(
        text,
        0x20_0000,
        Protection::read_only().execute(true),
        &mut gather,
    )?;
    let child = host.new_tables(SpaceId(2), VaRange::Lower)?;
    let fork = parent.copy_to(&child, data, 0x8000, CopyKind::Private, &mut gather)?;
    drop(gather); // flushes the parent's downgrades

    let mut gather = child.gather();
    child.zap(data.add(0x1000), 0x1000, &mut gather)?;
    drop(gather);

    let t = parent.translate(text.add(0x1234))?;
    println!(
        "parent text {:#x} -> {:#x} ({:?}, writable {}, executable {})",
        text.0 + 0x1234,
        t.phys.0,
        t.size,
        t.attrs.writable,
        t.attrs.executable
    );
    for va in [data, data.add(0x1000)] {
        match child.translate(va) {
            Ok(t) => println!(
                "child {:#x} -> {:#x} (writable {})",
                va.0, t.phys.0, t.attrs.writable
            ),
            Err(error) => println!("child: {error}"),
        }
    }
    println!(
        "fork copied {:?} leaves, write-protected {}",
        fork.copied, fork.write_protected
    );
    println!("parent {:?}", parent.verify()?);
    println!("child  {:?}", child.verify()?);
    drop((parent, child));
    println!(
        "frames in use after both trees are dropped: {}",
        host.frames().outstanding()
    );
    Ok(())
}
