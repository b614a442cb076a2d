use clap::Parser;

use facefs::cli::Cli;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("FACEFS_LOG", "info")).format_timestamp_millis().init();
    let settings = match Cli::parse().into_settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("facefs: {message}");
            std::process::exit(2);
        }
    };
    std::process::exit(facefs::daemon::run(settings));
}
