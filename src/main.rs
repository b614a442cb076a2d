use std::os::unix::fs::OpenOptionsExt;

use clap::Parser;

use facefs::cli::Cli;

fn main() {
    // glibc gives each busy thread its own malloc arena, and freed face
    // buffers linger in them: two arenas keep RSS near what the cache holds.
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // mount(8) hands options over as `-o a=b,c`: make them flags first.
    let args = match facefs::mount_options::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("facefs: {message}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::new().filter_or("FACEFS_LOG", "info,fuser=error"),
    );
    logger.format_timestamp_millis();
    if let Some(path) = &cli.log_file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => {
                logger.target(env_logger::Target::Pipe(Box::new(file)));
            }
            Err(e) => {
                eprintln!("facefs: cannot open the log file {}: {e}", path.display());
                std::process::exit(2);
            }
        }
    }
    logger.init();
    let settings = match cli.into_settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("facefs: {message}");
            std::process::exit(2);
        }
    };
    std::process::exit(facefs::daemon::run(settings));
}
