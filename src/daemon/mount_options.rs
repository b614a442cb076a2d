//! `-o name=value,...`: the form mount(8) and mount.fuse3 pass options in,
//! so that an /etc/fstab line can mount facefs. Each option becomes the
//! command-line flag of the same name, before the flags are parsed.

use std::ffi::OsString;

/// Generic mount(8) and FUSE options that need nothing from facefs: it is
/// always read-only, nodev, nosuid and noexec, and the rest concern mount(8).
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

/// `-o` options whose flag takes no value.
const SWITCHES: &[&str] = &["allow_other", "allow_root", "foreground", "demo", "recover"];

/// Options that are flags with a value: `name=value` becomes `--name value`.
const VALUED: &[&str] = &[
    "app_id",
    "app_secret_file",
    "base_url",
    "cache_size",
    "ttl",
    "negative_ttl",
    "request_timeout",
    "retry_budget",
    "rate_limit",
    "max_parallel",
    "log_file",
    "metrics_listen",
    "uid",
    "gid",
    "file_mode",
    "dir_mode",
];

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
        // mount(8) adds `rw` whenever `ro` is not given; facefs mounts read-only regardless.
        ("rw", None) => Ok(vec![]),
        ("app_secret", _) => Err("the app secret cannot be a mount option (fstab and argv are readable by all): use app_secret_file=PATH".into()),
        // mount.fuse3 passes these through for the helper's own use.
        ("fsname" | "subtype", Some(_)) => Ok(vec![]),
        (n, None) if IGNORED.contains(&n) => Ok(vec![]),
        (n, None) if SWITCHES.contains(&n) => Ok(vec![flag()]),
        (n, Some(v)) if VALUED.contains(&n) => Ok(vec![flag(), OsString::from(v)]),
        (n, None) if VALUED.contains(&n) => Err(format!("mount option `{n}` needs a value: {n}=...")),
        (n, Some(_)) if SWITCHES.contains(&n) || IGNORED.contains(&n) => Err(format!("mount option `{n}` takes no value")),
        (n, _) => Err(format!("unknown mount option `{n}` (see `facefs --help`; every option's name works as -o name=value)")),
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
    }
}
