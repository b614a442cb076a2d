//! Writes facefs's man page and shell completions, generated from the same
//! clap definitions as `facefs --help`, into a directory.
//! Usage: facefs-docs OUT_DIR

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: facefs-docs OUT_DIR");
        std::process::exit(2);
    };
    if let Err(e) = write_all(&out) {
        eprintln!("facefs-docs: {}: {e}", out.display());
        std::process::exit(1);
    }
}

fn write_all(out: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut command = facefs::daemon::cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(out.join("facefs.1"), page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, "facefs", out)?;
    }
    Ok(())
}
