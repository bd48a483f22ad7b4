//! `sbx-net`: the per-VM user-mode network process. See `net::contract` for its stdin/stdout
//! contract.

fn main() {
    std::process::exit(net::process::main());
}
