use clap::Parser;

use facefs::daemon::cli::Cli;

fn main() {
    facefs::daemon::hardening::make_undumpable();
    // glibc gives each busy thread its own malloc arena, and freed face
    // buffers linger in them: two arenas keep RSS near what the cache holds.
    // Buffers of 1 MiB and more (large faces) are mapped and unmapped on
    // their own: glibc's default threshold rises after each such free, and
    // heap memory freed later stays in RSS, outside every bound facefs keeps.
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    // `facefs prefetch MOUNTPOINT`; a mount point named "prefetch" is `./prefetch`.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|first| first == "prefetch") {
        let cli = facefs::prefetch::PrefetchCli::parse_from(std::env::args_os().skip(1));
        std::process::exit(facefs::prefetch::run(cli));
    }
    // mount(8) hands options over as `-o a=b,c`: make them flags first.
    let args = match facefs::daemon::mount_options::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("facefs: {message}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    if let Err(message) = facefs::daemon::logging::init(cli.foreground, cli.log_file.as_deref()) {
        eprintln!("facefs: {message}");
        std::process::exit(2);
    }
    let settings = match cli.into_settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("facefs: {message}");
            std::process::exit(2);
        }
    };
    std::process::exit(facefs::daemon::run(settings));
}
