//! AArch64 tables in host memory, one tree per half as the hardware has
//! them: the kernel's (TTBR1, `SpaceId::KERNEL`) and a process's (TTBR0).
//! Maps, protects, forks, unmaps and translates, and shows that a tree
//! refuses the other half's addresses.
//!
//! `cargo run -p lazymmu --example aarch64`

use lazymmu::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host = Host::<Aarch64>::new(PhysAddr(0x4000_0000), 256);
    let kernel = host.new_tables(SpaceId::KERNEL, VaRange::Upper)?;
    let user = host.new_tables(SpaceId(1), VaRange::Lower)?;
    let direct_map = VirtAddr(0xffff_0000_0000_0000);
    kernel.map(
        direct_map,
        PhysAddr(0),
        1 << 30,
        Attributes::default(),
        PageSize::Size1G,
    )?;
    user.map(
        VirtAddr(0x1_0000),
        PhysAddr(0x8000_0000),
        0x4000,
        Attributes::user_data(),
        PageSize::Size4K,
    )?;

    let mut gather = user.gather();
    user.protect(
        VirtAddr(0x1_0000),
        0x1000,
        Protection::read_only(),
        &mut gather,
    )?;
    let child = host.new_tables(SpaceId(2), VaRange::Lower)?;
    user.copy_to(
        &child,
        VirtAddr(0x1_0000),
        0x4000,
        CopyKind::Private,
        &mut gather,
    )?;
    user.zap(VirtAddr(0x1_3000), 0x1000, &mut gather)?;
    drop(gather);

    let refused = user.map(
        direct_map,
        PhysAddr(0),
        0x1000,
        Attributes::default(),
        PageSize::Size4K,
    );
    println!(
        "a user tree given a kernel address: {}",
        refused.unwrap_err()
    );
    let t = kernel.translate(direct_map.add(0x1234))?;
    println!(
        "kernel {:#x} -> {:#x} ({:?}, accessed {})",
        direct_map.0 + 0x1234,
        t.phys.0,
        t.size,
        t.attrs.accessed
    );
    for va in [0x1_0000, 0x1_1000, 0x1_3000] {
        match child.translate(VirtAddr(va)) {
            Ok(t) => println!(
                "child {va:#x} -> {:#x} writable {}",
                t.phys.0, t.attrs.writable
            ),
            Err(error) => println!("child: {error}"),
        }
    }
    println!(
        "parent lost {:#x}: {}",
        0x1_3000,
        user.translate(VirtAddr(0x1_3000)).unwrap_err()
    );
    println!("kernel {:?}", kernel.verify()?);
    println!("user   {:?}", user.verify()?);
    Ok(())
}
