//! The Feishu ACS emulator as a program of its own, for benchmarks and for
//! trying tools against a local "tenant": it prints its base URL and the
//! (public, test-only) credentials, then serves until killed.

use std::time::Duration;

use clap::Parser;

use facefs::emulator::tenant::TenantSpec;
use facefs::emulator::{Emulator, EmulatorConfig};

#[derive(Parser)]
#[command(
    name = "facefs-emulator",
    version,
    about = "A local emulator of Feishu's ACS face API (loopback only)"
)]
struct Args {
    /// Address to listen on; only loopback addresses are accepted.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Users in the tenant (every seventh past the first eight has no face).
    #[arg(long, default_value_t = 30)]
    users: usize,
    /// Width of a full face in pixels (height is 5/4 of it); larger faces are larger files.
    #[arg(long, default_value_t = 120)]
    face_width: u16,
    /// Delay added to every ACS answer, e.g. 50ms.
    #[arg(long, value_parser = facefs::daemon::cli::parse_duration, default_value = "0s")]
    latency: Duration,
    /// ACS requests admitted per second; more are refused with HTTP 429 / 99991400.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Pad every face to at least this size (e.g. 16MiB), for tests of large answers.
    #[arg(long, value_parser = facefs::daemon::cli::parse_size, default_value = "0")]
    pad_faces_to: u64,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("FACEFS_LOG", "warn")).init();
    let args = Args::parse();
    let loopback = args
        .listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    if !loopback {
        eprintln!("facefs-emulator: --listen must be a loopback address such as 127.0.0.1:8080");
        std::process::exit(2);
    }
    let tenant = TenantSpec {
        users: args.users,
        face_width: args.face_width,
        face_height: args.face_width / 4 * 5,
        pad_faces_to: usize::try_from(args.pad_faces_to).unwrap_or(usize::MAX),
        ..TenantSpec::default()
    };
    let config = EmulatorConfig {
        listen: args.listen,
        tenant,
        rate_limit: args.rate_limit,
        ..EmulatorConfig::default()
    };
    let emulator = match Emulator::start(config) {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!("facefs-emulator: cannot listen: {e}");
            std::process::exit(1);
        }
    };
    // Beyond this, faces are made on first request (generating 200,000 at
    // once would take minutes and gigabytes).
    if args.users <= 20_000 {
        eprintln!("facefs-emulator: generating {} users' faces", args.users);
        emulator.tenant().generate_all_faces();
    }
    emulator.set_latency(args.latency);
    println!("base_url={}", emulator.base_url());
    println!("app_id={}", emulator.config().app_id);
    println!("app_secret={}", emulator.config().app_secret);
    loop {
        std::thread::park();
    }
}
