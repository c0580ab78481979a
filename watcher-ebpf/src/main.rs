//! watcher's kernel programs. They observe (and, in enforce mode, deny) but never decide policy:
//! userspace compiles the policy into the maps in `maps.rs`.
#![no_std]
#![no_main]

mod common;
mod dns;
mod exec;
mod files;
mod guard;
mod maps;
mod net;
mod payload;
mod safe;
mod syscalls;
mod target;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
