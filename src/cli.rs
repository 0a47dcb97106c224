//! Command-line flags: due's flag scanner (`--etc`, `--mode`) plus `--help`, `--version`, `--upgrade`.
//! Owns only the parsing of `argv[1..]` into [`Flags`]; applying them (precedence over env vars
//! and the config file) belongs to the caller.

/// Flags recognised by the gate.
///
/// `etc` and `mode` are `Option<String>` rather than parsed values because due distinguishes
/// "absent" (fall back to `DUE_ETC` / `DUE_MODE` / the file) from "present without a value"
/// (`Some("")`, which for `--mode` means `debug`). Interpreting the string is the caller's job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--etc`: configuration file or directory.
    pub etc: Option<String>,
    /// `--mode`: `debug`, `test` or `release` (validated by the caller).
    pub mode: Option<String>,
    /// `-h` / `--help` (or `-help`) was given.
    pub help: bool,
    /// `--version` (or `-version`) was given.
    pub version: bool,
    /// `--upgrade`: take over from the gate running with the same configuration.
    pub upgrade: bool,
}

/// Parses `args` (the command line **without** `argv[0]`) the way due's `flag` package does.
///
/// Rules (client-protocol.md §5.2):
/// * scanning starts at the first argument and stops at the first argument that is not a flag
///   (does not start with `-`, or is a lone `-`) or right after a `--` terminator;
/// * a flag is `-name` or `--name`, optionally with `=value`;
/// * without `=`, the next argument becomes the value unless it starts with `-`;
/// * a flag present without a value yields `Some("")`; the last occurrence wins;
/// * unknown names are accepted and ignored, so wrappers may pass their own flags.
///
/// The only error is malformed syntax (`---x`, `-=x`, `--=x`): due prints "bad flag syntax" in an
/// endless loop there; we return `Err("bad flag syntax: <arg>")` instead.
pub fn parse_flags<I: IntoIterator<Item = String>>(args: I) -> Result<Flags, String> {
    let mut flags = Flags::default();
    let mut args = args.into_iter().peekable();

    while let Some(arg) = args.next_if(|a| a.len() >= 2 && a.starts_with('-')) {
        if arg == "--" {
            break;
        }
        let body = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .unwrap_or_default();
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(format!("bad flag syntax: {arg}"));
        }
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, value.to_owned()),
            // The next argument is the value unless it looks like a flag; an empty next
            // argument counts as an (empty) value.
            None => match args.next_if(|next| !next.starts_with('-')) {
                Some(next) => (body, next),
                None => (body, String::new()),
            },
        };
        match name {
            "etc" => flags.etc = Some(value),
            "mode" => flags.mode = Some(value),
            "h" | "help" => flags.help = true,
            "version" => flags.version = true,
            // Like a Go bool flag: present = true, `--upgrade=false` = false.
            "upgrade" => flags.upgrade = value != "false",
            _ => {}
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, String> {
        parse_flags(args.iter().map(|s| s.to_string()))
    }

    fn etc(args: &[&str]) -> Option<String> {
        parse(args).unwrap().etc
    }

    #[test]
    fn no_arguments() {
        assert_eq!(parse(&[]).unwrap(), Flags::default());
    }

    #[test]
    fn single_and_double_dash_without_value() {
        assert_eq!(etc(&["-etc"]), Some(String::new()));
        assert_eq!(etc(&["--etc"]), Some(String::new()));
    }

    #[test]
    fn equals_forms() {
        assert_eq!(etc(&["-etc=./conf"]), Some("./conf".into()));
        assert_eq!(etc(&["--etc=./conf"]), Some("./conf".into()));
        // Only the first '=' splits; the rest belongs to the value.
        assert_eq!(etc(&["--etc=a=b"]), Some("a=b".into()));
        assert_eq!(etc(&["--etc="]), Some(String::new()));
    }

    #[test]
    fn separate_value_forms() {
        assert_eq!(etc(&["--etc", "./conf"]), Some("./conf".into()));
        assert_eq!(etc(&["-etc", "./conf"]), Some("./conf".into()));
        assert_eq!(
            parse(&["--etc", "./conf", "--mode", "release"]).unwrap(),
            Flags {
                etc: Some("./conf".into()),
                mode: Some("release".into()),
                ..Flags::default()
            }
        );
    }

    #[test]
    fn next_flag_is_not_taken_as_value() {
        let f = parse(&["--mode", "--etc", "x"]).unwrap();
        assert_eq!(f.mode, Some(String::new()));
        assert_eq!(f.etc, Some("x".into()));
        // A lone "-" starts with '-', so it is not a value either; it then stops the scan.
        let f = parse(&["--mode", "-", "--etc=x"]).unwrap();
        assert_eq!(f.mode, Some(String::new()));
        assert_eq!(f.etc, None);
    }

    #[test]
    fn stops_at_first_non_flag() {
        let f = parse(&["--etc=a", "positional", "--mode=test"]).unwrap();
        assert_eq!(f.etc, Some("a".into()));
        assert_eq!(f.mode, None);
        assert_eq!(parse(&["positional", "--etc=a"]).unwrap(), Flags::default());
    }

    #[test]
    fn stops_at_double_dash() {
        let f = parse(&["--mode=test", "--", "--etc=a"]).unwrap();
        assert_eq!(f.mode, Some("test".into()));
        assert_eq!(f.etc, None);
    }

    #[test]
    fn unknown_flags_are_ignored_with_their_values() {
        let f = parse(&["--foo", "bar", "-x=1", "--etc", "e"]).unwrap();
        assert_eq!(f.etc, Some("e".into()));
        assert!(!f.help && !f.version);
    }

    #[test]
    fn help_and_version() {
        assert!(parse(&["-h"]).unwrap().help);
        assert!(parse(&["--help"]).unwrap().help);
        assert!(parse(&["-help"]).unwrap().help);
        assert!(parse(&["--version"]).unwrap().version);
        assert!(parse(&["-version"]).unwrap().version);
        let f = parse(&["--etc=x"]).unwrap();
        assert!(!f.help && !f.version && !f.upgrade);
    }

    #[test]
    fn upgrade() {
        let f = parse(&["--upgrade", "--etc", "dir"]).unwrap();
        assert!(f.upgrade);
        assert_eq!(f.etc.as_deref(), Some("dir"));
        assert!(parse(&["-upgrade"]).unwrap().upgrade);
        assert!(!parse(&["--upgrade=false"]).unwrap().upgrade);
    }

    #[test]
    fn last_occurrence_wins() {
        assert_eq!(etc(&["--etc=a", "--etc", "b"]), Some("b".into()));
    }

    #[test]
    fn bad_syntax_is_an_error_not_a_loop() {
        for bad in ["---x", "-=x", "--=x", "---"] {
            assert_eq!(parse(&[bad]), Err(format!("bad flag syntax: {bad}")));
        }
        // Also after valid flags.
        assert_eq!(
            parse(&["--etc=a", "---mode"]),
            Err("bad flag syntax: ---mode".into())
        );
    }

    #[test]
    fn non_ascii_values_and_names() {
        assert_eq!(etc(&["--etc=./配置"]), Some("./配置".into()));
        assert_eq!(
            parse(&["--é=1", "--etc", "x"]).unwrap().etc,
            Some("x".into())
        );
    }
}
