//! `-o name=value,...`: the form mount(8) and mount.fuse3 pass options in,
//! so that an /etc/fstab line can mount facefs. Each option becomes the
//! command-line flag of the same name, before the flags are parsed.

use std::ffi::OsString;

use clap::CommandFactory;

use super::cli::Cli;

/// Generic mount(8) and FUSE options that need nothing from facefs: it is
/// read-only unless `writable` is given, always nodev, nosuid and noexec,
/// and the rest concern mount(8).
const IGNORED: &[&str] = &[
    "ro",
    "nodev",
    "nosuid",
    "noexec",
    "dev",
    "suid",
    "exec",
    "_netdev",
    "noauto",
    "auto",
    "user",
    "nouser",
    "users",
    "defaults",
    "nofail",
    "async",
    "sync",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "default_permissions",
];

/// What an option name means as a flag of [`Cli`], read from clap's own
/// definition so that every flag is an option and none is listed twice.
enum Flag {
    Switch,
    Valued,
}

fn flag_of(name: &str) -> Option<Flag> {
    let long = name.replace('_', "-");
    let command = Cli::command();
    let arg = command.get_arguments().find(|a| {
        a.get_long() == Some(long.as_str())
            || a.get_all_aliases()
                .is_some_and(|aliases| aliases.contains(&long.as_str()))
    })?;
    // --help and --version print and exit: nothing for a mount table.
    if matches!(long.as_str(), "help" | "version") {
        return None;
    }
    Some(if arg.get_action().takes_values() {
        Flag::Valued
    } else {
        Flag::Switch
    })
}

/// Rewrites every `-o LIST` (or `-oLIST`) in `args` into flags. Errors name
/// the option that cannot be used. mount.fuse3 runs `facefs SOURCE
/// MOUNTPOINT -o LIST`: with options present and two leading paths, the
/// source (a label) is dropped.
pub fn expand(mut args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let is_path = |a: Option<&OsString>| a.is_some_and(|a| !a.as_encoded_bytes().starts_with(b"-"));
    let has_options = args.iter().any(|a| a.as_encoded_bytes().starts_with(b"-o"));
    if has_options && is_path(args.get(1)) && is_path(args.get(2)) {
        args.remove(1);
    }
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let list = match arg.to_str() {
            Some("-o") => iter
                .next()
                .ok_or("-o needs a list of options, e.g. -o app_id=cli_x,allow_other")?,
            Some(s) if s.starts_with("-o") && s.len() > 2 => OsString::from(&s[2..]),
            _ => {
                out.push(arg);
                continue;
            }
        };
        let list = list
            .into_string()
            .map_err(|_| "mount options must be UTF-8".to_owned())?;
        for option in list.split(',').filter(|o| !o.is_empty()) {
            out.extend(translate(option)?);
        }
    }
    Ok(out)
}

fn translate(option: &str) -> Result<Vec<OsString>, String> {
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    let flag = || OsString::from(format!("--{}", name.replace('_', "-")));
    match (name, value) {
        // mount(8) adds `rw` whenever `ro` is not given; facefs mounts
        // read-only unless given `writable`, its own, deliberate option.
        ("rw", None) => Ok(vec![]),
        ("app_secret", _) => Err("the app secret cannot be a mount option (fstab and argv are readable by all): use app_secret_file=PATH".into()),
        // mount.fuse3 passes these through for the helper's own use.
        ("fsname" | "subtype", Some(_)) => Ok(vec![]),
        (n, None) if IGNORED.contains(&n) => Ok(vec![]),
        (n, Some(_)) if IGNORED.contains(&n) => Err(format!("mount option `{n}` takes no value")),
        (n, value) => match (flag_of(n), value) {
            (Some(Flag::Switch), None) => Ok(vec![flag()]),
            (Some(Flag::Valued), Some(v)) => Ok(vec![flag(), OsString::from(v)]),
            (Some(Flag::Valued), None) => Err(format!("mount option `{n}` needs a value: {n}=...")),
            (Some(Flag::Switch), Some(_)) => Err(format!("mount option `{n}` takes no value")),
            (None, _) => Err(format!("unknown mount option `{n}` (see `facefs --help`; every option's name works as -o name=value)")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: &[&str]) -> Result<Vec<String>, String> {
        expand(args.iter().map(OsString::from).collect())
            .map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn the_fstab_form() {
        let got = expand_str(&[
            "facefs",
            "facefs",
            "/mnt/faces",
            "-o",
            "rw_is_not_here,_netdev,allow_other,app_id=cli_x,app_secret_file=/etc/facefs/secret",
        ]);
        assert_eq!(got.unwrap_err(), "unknown mount option `rw_is_not_here` (see `facefs --help`; every option's name works as -o name=value)");
        let got = expand_str(&[
            "facefs",
            "facefs",
            "/mnt/faces",
            "-o",
            "ro,_netdev,allow_other,app_id=cli_x,app_secret_file=/etc/s,uid=0,cache_size=1GiB",
        ]);
        assert_eq!(
            got.unwrap(),
            [
                "facefs",
                "/mnt/faces",
                "--allow-other",
                "--app-id",
                "cli_x",
                "--app-secret-file",
                "/etc/s",
                "--uid",
                "0",
                "--cache-size",
                "1GiB"
            ]
        );
        assert_eq!(
            expand_str(&["facefs", "-ottl=5m", "/m"]).unwrap(),
            ["facefs", "--ttl", "5m", "/m"]
        );
        // fuse2's `nonempty` is the flag's alias.
        assert_eq!(
            expand_str(&["facefs", "-o", "nonempty", "/m"]).unwrap(),
            ["facefs", "--nonempty", "/m"]
        );
        // Without -o nothing is dropped: a stray second path stays an error for clap.
        assert_eq!(
            expand_str(&["facefs", "/a", "/b"]).unwrap(),
            ["facefs", "/a", "/b"]
        );
    }

    #[test]
    fn refusals_name_the_fix() {
        assert_eq!(
            expand_str(&["facefs", "/m", "-o", "rw"]).unwrap(),
            ["facefs", "/m"],
            "mount(8) adds rw by itself"
        );
        assert!(expand_str(&["facefs", "/m", "-o", "app_secret=x"])
            .unwrap_err()
            .contains("app_secret_file"));
        assert!(expand_str(&["facefs", "/m", "-o", "ttl"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(expand_str(&["facefs", "/m", "-o", "allow_other=1"])
            .unwrap_err()
            .contains("takes no value"));
        assert!(expand_str(&["facefs", "/m", "-o"]).is_err());
        assert!(expand_str(&["facefs", "/m", "-o", "help"])
            .unwrap_err()
            .contains("unknown mount option"));
    }

    /// Every long flag of the command line works as an -o option, with a
    /// value exactly when the flag takes one.
    #[test]
    fn every_flag_is_a_mount_option() {
        let command = Cli::command();
        let mut seen = 0;
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let name = long.replace('-', "_");
            let option = if arg.get_action().takes_values() {
                format!("{name}=1")
            } else {
                name.clone()
            };
            let got = expand_str(&["facefs", "/m", "-o", &option]).unwrap();
            assert_eq!(got[2], format!("--{long}"), "{option}");
            seen += 1;
        }
        assert!(seen >= 20, "only {seen} flags");
    }
}
