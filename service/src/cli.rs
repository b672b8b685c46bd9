//! The command line of every wsmq program read the same way.

use std::process::ExitCode;

/// Exit status for a command line or configuration that cannot work (sysexits(3) EX_USAGE), so
/// systemd does not restart-loop on it (`RestartPreventExitStatus=64`).
pub const EXIT_USAGE: u8 = 64;

/// Parses the command line, or says why not and gives the status to exit with: 64 for a bad
/// command line (the message on stderr), 0 for `--help` and `--version` (printed on stdout).
pub fn parse_args<C: clap::Parser>() -> Result<C, ExitCode> {
    parse_args_from(std::env::args_os())
}

/// [`parse_args`] on the given arguments (the first is the program's name).
pub fn parse_args_from<C, I, T>(args: I) -> Result<C, ExitCode>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    C::try_parse_from(args).map_err(|e| {
        // Nothing better to do if stderr is gone; the exit status still says it.
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(version)]
    struct Cli {
        #[arg(long)]
        count: Option<u32>,
    }

    #[test]
    fn good_command_line_parses() {
        let cli: Cli = parse_args_from(["prog", "--count", "3"]).expect("parses");
        assert_eq!(cli.count, Some(3));
    }

    #[test]
    fn bad_command_line_exits_64() {
        let refused = parse_args_from::<Cli, _, _>(["prog", "--count", "many"]);
        assert_eq!(refused.err(), Some(ExitCode::from(EXIT_USAGE)));
        let refused = parse_args_from::<Cli, _, _>(["prog", "--no-such-flag"]);
        assert_eq!(refused.err(), Some(ExitCode::from(EXIT_USAGE)));
    }

    #[test]
    fn help_and_version_exit_0() {
        let help = parse_args_from::<Cli, _, _>(["prog", "--help"]);
        assert_eq!(help.err(), Some(ExitCode::SUCCESS));
        let version = parse_args_from::<Cli, _, _>(["prog", "--version"]);
        assert_eq!(version.err(), Some(ExitCode::SUCCESS));
    }
}
