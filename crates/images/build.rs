//! Compiles the two guest binaries (`guest-init`, `guest-agent`) as static executables so
//! `images` can embed them with `include_bytes!` and put them into the initramfs.

fn main() {
    static_build::StaticBuild {
        crates: &["guest-init", "guest-agent", "protocol"],
        packages: &["guest-init", "guest-agent"],
        features: None,
        bins: &[
            ("guest-init", "SBX_GUEST_INIT_PATH"),
            ("guest-agent", "SBX_GUEST_AGENT_PATH"),
        ],
    }
    .run();
}
